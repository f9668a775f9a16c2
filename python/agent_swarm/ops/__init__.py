"""The core's services, one job each: base images, VMs (create/delete), projects, seal,
tasks, gc, checkpoints, capacity, views. Built and wired by :class:`agent_swarm.core.Core`."""
