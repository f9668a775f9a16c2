"""The SQLite registry: identity and desired configuration of base images, projects and tasks."""

from agent_swarm.registry.db import SCHEMA_VERSION, Registry

__all__ = ["SCHEMA_VERSION", "Registry"]
