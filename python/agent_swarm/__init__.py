"""agent-swarm: isolated, copy-on-write cloned VMs for running many AI coding agents."""

from __future__ import annotations

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # Looked up on first use only: importlib.metadata costs ~20 ms at every start-up.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("agent-swarm")
        except PackageNotFoundError:  # pragma: no cover - running from an unbuilt tree
            return "0+unknown"
    raise AttributeError(name)
