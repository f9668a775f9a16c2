"""The DHCP lease parser of agent-swarm-vz (native/vz/src/core/leases.cpp), through the
helper's `lease --file PATH --mac MAC [--now EPOCH]` subcommand.

The text imitates macOS's /var/db/dhcpd_leases as bootpd writes it (tab-indented key=value
lines in {/} blocks, MAC octets without a leading zero, `lease` = hex expiry). Addresses are
documentation addresses (198.51.100.0/24) used as data only; nothing connects anywhere."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

NOW = 1_750_000_000  # a fixed "now" for --now; leases expire relative to it
MAC = "52:54:00:0a:0b:0c"


def block(
    ip: str = "198.51.100.10",
    hw: str = "1,52:54:0:a:b:c",
    lease: int | str = NOW + 3600,
    name: str = "debian",
) -> str:
    expiry = lease if isinstance(lease, str) else f"0x{lease:x}"
    return (
        "{\n"
        f"\tname={name}\n"
        f"\tip_address={ip}\n"
        f"\thw_address={hw}\n"
        f"\tidentifier={hw}\n"
        f"\tlease={expiry}\n"
        "}\n"
    )


def lookup(
    binary: Path, path: Path, mac: str = MAC, now: int | None = NOW
) -> tuple[int, dict[str, Any]]:
    args = [str(binary), "lease", "--file", str(path), "--mac", mac]
    if now is not None:
        args += ["--now", str(now)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode in (0, 1), (proc.returncode, proc.stdout, proc.stderr)
    out: dict[str, Any] = json.loads(proc.stdout)
    return proc.returncode, out


def address_of(binary: Path, tmp_path: Path, text: str | bytes, **kw: Any) -> str | None:
    path = tmp_path / "dhcpd_leases"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    rc, out = lookup(binary, path, **kw)
    if rc == 0:
        assert set(out) == {"address", "expires"}, out
        return str(out["address"])
    assert out == {"error": "not_found"}, out
    return None


def test_octets_without_leading_zero(vz_helper_bin: Path, tmp_path: Path) -> None:
    text = block(ip="198.51.100.7", hw="1,2:a:3:4:5:6")
    assert address_of(vz_helper_bin, tmp_path, text, mac="02:0a:03:04:05:06") == "198.51.100.7"
    # the MAC given to the helper may also be written without leading zeros
    assert address_of(vz_helper_bin, tmp_path, text, mac="2:a:3:4:5:6") == "198.51.100.7"
    # and the two-digit octets of the file are read as they are
    text = block(ip="198.51.100.8", hw="1,52:54:00:ab:cd:ef")
    assert address_of(vz_helper_bin, tmp_path, text, mac="52:54:00:ab:cd:ef") == "198.51.100.8"


def test_uppercase_mac(vz_helper_bin: Path, tmp_path: Path) -> None:
    text = block(ip="198.51.100.9", hw="1,52:54:0:AB:cd:Ef")
    assert address_of(vz_helper_bin, tmp_path, text, mac="52:54:00:ab:CD:EF") == "198.51.100.9"


def test_expiry_is_printed(vz_helper_bin: Path, tmp_path: Path) -> None:
    path = tmp_path / "dhcpd_leases"
    path.write_text(block(ip="198.51.100.11", lease=0x66AA11BB))
    rc, out = lookup(vz_helper_bin, path, now=0x66AA11BB - 1)
    assert rc == 0
    assert out == {"address": "198.51.100.11", "expires": 0x66AA11BB}


def test_expired_dropped(vz_helper_bin: Path, tmp_path: Path) -> None:
    expired = block(ip="198.51.100.20", lease=NOW - 1)
    assert address_of(vz_helper_bin, tmp_path, expired) is None
    # expiring exactly now counts as expired (tart: expiresAt.isInFuture)
    assert address_of(vz_helper_bin, tmp_path, block(lease=NOW)) is None
    # an expired later block does not hide a valid earlier one
    text = block(ip="198.51.100.21", lease=NOW + 60) + expired
    assert address_of(vz_helper_bin, tmp_path, text) == "198.51.100.21"


def test_newest_wins(vz_helper_bin: Path, tmp_path: Path) -> None:
    text = (
        block(ip="198.51.100.30", lease=NOW + 300)
        + block(ip="198.51.100.31", lease=NOW + 900)
        + block(ip="198.51.100.32", lease=NOW + 600)
    )
    assert address_of(vz_helper_bin, tmp_path, text) == "198.51.100.31"
    # other MACs' leases are not taken, however new
    text = block(ip="198.51.100.33", hw="1,52:54:0:a:b:d", lease=NOW + 9999) + block(
        ip="198.51.100.34", lease=NOW + 10
    )
    assert address_of(vz_helper_bin, tmp_path, text) == "198.51.100.34"
    # a MAC with no lease at all
    assert address_of(vz_helper_bin, tmp_path, text, mac="52:54:00:99:99:99") is None


def test_malformed_blocks_skipped(vz_helper_bin: Path, tmp_path: Path) -> None:
    good = block(ip="198.51.100.40", lease=NOW + 100)
    bad_blocks = [
        # an unterminated block, then a good one: parsing resumes at the next "{"
        "{\n\tip_address=198.51.100.41\n\thw_address=1,52:54:0:a:b:c\n",
        # the hardware type is not Ethernet (1)
        block(ip="198.51.100.42", hw="6,52:54:0:a:b:c", lease=NOW + 9000),
        # no hardware type at all
        block(ip="198.51.100.43", hw="52:54:0:a:b:c", lease=NOW + 9000),
        # a MAC octet that is not hex (tart would crash on this one)
        block(ip="198.51.100.44", hw="1,52:54:0:a:b:zz", lease=NOW + 9000),
        # three hex digits in an octet, or only five octets
        block(ip="198.51.100.45", hw="1,52:54:0:a:b:c0c", lease=NOW + 9000),
        block(ip="198.51.100.46", hw="1,52:54:0:a:b", lease=NOW + 9000),
        # the expiry is not hex, or is missing
        block(ip="198.51.100.47", lease="0xnothex"),
        block(ip="198.51.100.48", lease=""),
        "{\n\tip_address=198.51.100.49\n\thw_address=1,52:54:0:a:b:c\n}\n",
        # a repeated ip_address is ambiguous
        "{\n\tip_address=198.51.100.50\n\tip_address=198.51.100.51\n"
        f"\thw_address=1,52:54:0:a:b:c\n\tlease=0x{NOW + 9000:x}\n}}\n",
        # an empty key
        "{\n\t=x\n\tip_address=198.51.100.52\n\thw_address=1,52:54:0:a:b:c\n"
        f"\tlease=0x{NOW + 9000:x}\n}}\n",
        # a stray "}" and text outside any block
        "}\nip_address=198.51.100.53\n",
    ]
    for bad in bad_blocks:
        for text in (bad + good, good + bad):
            assert address_of(vz_helper_bin, tmp_path, text) == "198.51.100.40", bad
    # a block cut off at the end of the file (a truncated file) gives nothing
    assert address_of(vz_helper_bin, tmp_path, good[:-2]) is None
    # key-only lines (bootpd writes a property without a value as "key"), CRLF line ends and
    # blanks around the braces are tolerated
    text = good.replace("\tname=debian\n", "\tflag\n").replace("\n", "\r\n").replace("{", "  {")
    assert address_of(vz_helper_bin, tmp_path, text) == "198.51.100.40"


@pytest.mark.parametrize(
    "ip",
    [
        "256.1.1.1",
        "198.51.100.256",
        "198.51.100",
        "198.51.100.1.2",
        "198.51.100.",
        ".198.51.100",
        "198..51.100",
        "198.51.100.010",  # leading zero (inet_aton would read octal)
        "198.51.100.-1",
        "198.51.100.+1",
        "198.51.100.1x",
        "0x7f.0.0.1",
        "2001:db8::1",
        "198.51.100.1 198.51.100.2",
        "198.51.100.1/24",
        "",
        "1" * 2000,
    ],
)
def test_bad_ip_rejected(vz_helper_bin: Path, tmp_path: Path, ip: str) -> None:
    assert address_of(vz_helper_bin, tmp_path, block(ip=ip)) is None
    good = block(ip="198.51.100.60", lease=NOW + 1)
    assert address_of(vz_helper_bin, tmp_path, block(ip=ip, lease=NOW + 99) + good) == (
        "198.51.100.60"
    )


def test_edge_ips_accepted(vz_helper_bin: Path, tmp_path: Path) -> None:
    for ip in ("0.0.0.0", "255.255.255.255", "203.0.113.1", "127.0.0.1"):
        assert address_of(vz_helper_bin, tmp_path, block(ip=ip)) == ip


def test_garbage_and_huge_input(vz_helper_bin: Path, tmp_path: Path) -> None:
    good = block(ip="198.51.100.70", lease=NOW + 100)
    # random bytes, NULs, lone braces, and a good block after them
    garbage = bytes(range(256)) * 64 + b"\0{\0}\n{\n{\n}\n}\n=\n==\n"
    assert address_of(vz_helper_bin, tmp_path, garbage + good.encode()) == "198.51.100.70"
    # an over-long line spoils its block (bootpd reads 1024-byte lines)
    long_name = block(ip="198.51.100.71", lease=NOW + 9000, name="x" * 5000)
    assert address_of(vz_helper_bin, tmp_path, long_name + good) == "198.51.100.70"
    # a line of 10 MB without a newline
    assert address_of(vz_helper_bin, tmp_path, "a" * 10_000_000) is None
    # many keys in one block
    many = "{\n" + "\tk=v\n" * 10_000 + good[2:]
    assert address_of(vz_helper_bin, tmp_path, many + good) == "198.51.100.70"
    # past the 4 MiB bound the text is ignored: a lease there is not seen
    filler = block(ip="198.51.100.72", hw="1,52:54:0:1:1:1") * 40_000  # ~5 MB
    assert len(filler) > 4 << 20
    assert address_of(vz_helper_bin, tmp_path, good + filler) == "198.51.100.70"
    assert address_of(vz_helper_bin, tmp_path, filler + good) is None
    # an absurd expiry (more hex digits than fit) is refused, a 64-bit one is fine
    assert address_of(vz_helper_bin, tmp_path, block(lease="0x" + "f" * 40)) is None
    assert address_of(vz_helper_bin, tmp_path, block(lease="0x7fffffffffff")) == "198.51.100.10"


def test_missing_and_unreadable_file(vz_helper_bin: Path, tmp_path: Path) -> None:
    # no lease file yet (the NAT has not handed out a lease since boot): not found
    rc, out = lookup(vz_helper_bin, tmp_path / "no-such-file")
    assert (rc, out) == (1, {"error": "not_found"})
    # a directory is not a lease file
    rc, out = lookup(vz_helper_bin, tmp_path)
    assert rc == 1
    assert out["error"] == "unreadable"
    # an empty file
    assert address_of(vz_helper_bin, tmp_path, "") is None


def test_now_defaults_to_the_clock(vz_helper_bin: Path, tmp_path: Path) -> None:
    path = tmp_path / "dhcpd_leases"
    path.write_text(block(ip="198.51.100.80", lease=0x7FFFFFFF) + block(lease=NOW))
    rc, out = lookup(vz_helper_bin, path, now=None)
    assert (rc, out["address"]) == (0, "198.51.100.80")


@pytest.mark.parametrize(
    "args",
    [
        ["lease"],
        ["lease", "--file", "/nonexistent"],
        ["lease", "--mac", MAC],
        ["lease", "--file", "/nonexistent", "--mac", "52:54:00:0a:0b"],
        ["lease", "--file", "/nonexistent", "--mac", "52-54-00-0a-0b-0c"],
        ["lease", "--file", "/nonexistent", "--mac", MAC, "--now", "soon"],
        ["lease", "--file", "/nonexistent", "--mac", MAC, "--bogus", "1"],
        ["lease", "--file", "/nonexistent", "--mac", MAC, "--now"],
    ],
)
def test_usage_errors(vz_helper_bin: Path, args: list[str]) -> None:
    proc = subprocess.run(
        [str(vz_helper_bin), *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert json.loads(proc.stderr.strip().splitlines()[-1])["error"] in ("usage", "bad_mac")
