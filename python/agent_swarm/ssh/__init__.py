"""SSH: agent-swarm's client key, per-VM host keys pinned on the host, connections."""
