"""Helpers for the secrets tests (imported as ``env_helpers`` via the directory on sys.path)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent_swarm.registry import Registry
from agent_swarm.secrets import EnvStore, KeyringBackend


def add_project(home: Path, name: str = "myapp") -> None:
    with Registry(home / "registry.db") as reg:
        if not reg.list_base_images():
            reg.add_base_image(
                "debian-12",
                path="/img/debian-12.qcow2",
                format="qcow2",
                virtual_size=1 << 30,
                source="build:debian-12",
            )
        reg.add_project(
            name, base_image="debian-12", provider="libvirt", cpus=1, memory_mib=512, disk_gib=1
        )


def store(home: Path) -> tuple[EnvStore, Registry]:
    reg = Registry(home / "registry.db")
    return EnvStore(reg, KeyringBackend(home)), reg


def resolve(home: Path, project: str | None = None) -> dict[str, str]:
    s, reg = store(home)
    try:
        return s.resolve(project)
    finally:
        reg.close()


def env_rows(home: Path) -> list[tuple[str, str, bytes, bytes]]:
    db = home / "registry.db"
    if not db.exists():
        return []
    con = sqlite3.connect(db)
    try:
        return [
            (r[0], r[1], bytes(r[2]), bytes(r[3]))
            for r in con.execute(
                "SELECT scope, name, nonce, ciphertext FROM env_vars ORDER BY scope, name"
            )
        ]
    finally:
        con.close()


def state_bytes(home: Path) -> bytes:
    """Every byte of every file under the state directory (registry, WAL, anything else)."""
    return b"".join(p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file())
