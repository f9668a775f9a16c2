"""The one exception hierarchy of agent-swarm.

Every error a user can cause or fix is an :class:`AgentSwarmError`: it carries a one-line
message, an optional one-line hint, and the process exit code the CLI uses for it. Library
code raises these and never prints or exits; the CLI boundary (``agent_swarm.cli``) turns them
into ``Error: …`` / ``Hint: …`` on stderr.

Exit codes (documented in docs/cli.md):

====  ===============================================
0     success
1     failure (generic user or operation error)
2     usage error (bad option or argument; from click)
3     not found (VM, project, base image, env var)
4     provider unavailable (libvirt missing, no VZ, ...)
70    internal error (a bug: please report with --debug)
130   interrupted (Ctrl-C)
====  ===============================================
"""

from __future__ import annotations

from typing import ClassVar

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class AgentSwarmError(Exception):
    """Base of every error agent-swarm reports to a user."""

    exit_code: ClassVar[int] = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(AgentSwarmError):
    """Bad configuration or arguments detected by agent-swarm (not by click)."""

    exit_code = EXIT_USAGE


class InvalidName(ConfigError):
    """A name that would become a path, domain name or shell word is not allowed."""


class NotFound(AgentSwarmError):
    """Base for "no such thing" errors."""

    exit_code = EXIT_NOT_FOUND


class InstanceNotFound(NotFound):
    pass


class ProjectNotFound(NotFound):
    pass


class ImageNotFound(NotFound):
    pass


class EnvVarNotFound(NotFound):
    pass


class AlreadyExists(AgentSwarmError):
    """A name is already taken."""


class InvalidState(AgentSwarmError):
    """The operation does not fit the current state (e.g. a task before the project was sealed)."""


class Busy(InvalidState):
    """Another operation on the same VM is in progress, or was interrupted (a stale one)."""


class CapacityError(AgentSwarmError):
    """Creating the VMs would oversubscribe the host beyond the configured ratios."""


class ProviderUnavailable(AgentSwarmError):
    """This host cannot run the provider (missing software, no permission, wrong OS)."""

    exit_code = EXIT_UNAVAILABLE


class UnsupportedByProvider(AgentSwarmError):
    def __init__(self, feature: str, *, provider: str, hint: str | None = None) -> None:
        super().__init__(f"the {provider} provider does not support {feature}", hint=hint)
        self.feature = feature
        self.provider = provider


class ProviderError(AgentSwarmError):
    """The provider (libvirt, VZ, Hyper-V) failed an operation."""


class ImageError(AgentSwarmError):
    """A disk image is missing, invalid or could not be written."""


class RegistryError(AgentSwarmError):
    """The state database is unusable (corrupt, newer schema, locked for too long)."""


class SecretsError(AgentSwarmError):
    """Secrets could not be stored or read (no keystore, tampered ciphertext, ...)."""


class SSHError(AgentSwarmError):
    """An SSH connection or command failed (including a host key mismatch)."""


class Timeout(AgentSwarmError):
    """A bounded wait ran out."""


class Interrupted(AgentSwarmError):
    exit_code = EXIT_INTERRUPTED
