"""cloud-init NoCloud seed ISOs (built with pycdlib, no external tools)."""

from agent_swarm.cloudinit.seed import build_seed_iso, cloud_config

__all__ = ["build_seed_iso", "cloud_config"]
