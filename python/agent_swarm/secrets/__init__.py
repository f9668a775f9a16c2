"""Encrypted environment variables and the backends that hold their master key.

``EnvStore(registry).resolve(project)`` returns the decrypted variables to inject into a VM.
"""

from agent_swarm.secrets.backend import KeyringBackend, SecretBackend
from agent_swarm.secrets.store import EnvStore, EnvVarInfo

__all__ = ["EnvStore", "EnvVarInfo", "KeyringBackend", "SecretBackend"]
