"""Test doubles for agent-swarm's outside world (see fakes.provider)."""
