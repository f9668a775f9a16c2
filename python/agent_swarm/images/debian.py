"""Build a cloud-style, BIOS+UEFI bootable Debian 12 qcow2 from Debian packages only.

No download beyond the apt mirror(s) the host already uses, no loop devices, no mounts:

1. ``mmdebstrap`` installs a minimal system (cloud kernel, systemd, cloud-init with the NoCloud
   datasource, openssh-server, qemu-guest-agent, cloud-guest-utils, dbus, sudo) into a
   directory;
2. the tree is made image-ready: empty machine-id, no SSH host keys (cloud-init makes
   ed25519 + ecdsa ones per instance), no password logins, systemd-networkd DHCP on every
   NIC, serial console, a fixed GRUB config;
3. ``mke2fs -d`` writes it as the root filesystem straight into the disk file (``-E offset``),
   ``mkfs.fat`` + mtools make the EFI system partition;
4. GRUB: ``grub-mkimage`` builds ``BOOTX64.EFI`` for UEFI and ``core.img`` for BIOS, which we
   embed after the MBR ourselves (what ``grub-bios-setup`` does, without needing a device);
5. ``qemu-img convert`` turns the sparse raw disk into the final qcow2.

The result is cached by a hash of its recipe (this file's data), so tests and repeated
``init-base --build`` calls reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from agent_swarm.errors import AgentSwarmError, ConfigError, ProviderUnavailable

RECIPE_VERSION = 1
SUITE = "bookworm"
ROOT_LABEL = "rootfs"
DISK_SIZE = 3 << 30  # virtual size; projects grow it, cloud-init growpart expands the fs
ESP_START = 1 << 20
ESP_SIZE = 63 << 20
ROOT_START = ESP_START + ESP_SIZE  # 64 MiB

PACKAGES = [
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "systemd-resolved",
    "udev",
    "cloud-init",
    "openssh-server",
    "qemu-guest-agent",
    "cloud-guest-utils",
    "dbus",
    "sudo",
    "ca-certificates",
    "netbase",
    "iproute2",
    "kmod",
    "e2fsprogs",
    "less",
]

CLOUD_CFG = """\
# agent-swarm base image defaults
datasource_list: [NoCloud, None]
manage_etc_hosts: true
locale: C.UTF-8
ssh_pwauth: false
disable_root: true
ssh_deletekeys: true
ssh_genkeytypes: [ed25519, ecdsa]
network: {config: disabled}
"""

NETWORKD = """\
[Match]
Name=en* eth*

[Network]
DHCP=yes

[DHCPv4]
UseDomains=true
"""

SSHD = """\
# agent-swarm: keys only
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
"""

FSTAB = f"LABEL={ROOT_LABEL} / ext4 defaults,errors=remount-ro 0 1\n"

KERNEL_ARGS = "ro console=tty0 console=ttyS0,115200n8"

GRUB_EARLY = f"search --no-floppy --label {ROOT_LABEL} --set=root\nset prefix=($root)/boot/grub\n"

GRUB_CFG = f"""\
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
search --no-floppy --label {ROOT_LABEL} --set=root
menuentry 'Debian GNU/Linux 12 (agent-swarm)' {{
    linux /vmlinuz root=LABEL={ROOT_LABEL} {KERNEL_ARGS}
    initrd /initrd.img
}}
"""

GRUB_COMMON_MODULES = [
    "part_msdos",
    "ext2",
    "search",
    "search_label",
    "normal",
    "linux",
    "configfile",
    "echo",
    "test",
    "serial",
    "terminal",
    "gzio",
    "boot",
    "ls",
    "cat",
]
GRUB_PC_MODULES = ["biosdisk", *GRUB_COMMON_MODULES]
GRUB_EFI_MODULES = ["fat", "efi_gop", "all_video", *GRUB_COMMON_MODULES]

TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "mke2fs": "e2fsprogs",
    "mkfs.fat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "grub-mkimage": "grub-common",
    "qemu-img": "qemu-utils",
}
GRUB_DIRS = {"i386-pc": "grub-pc-bin", "x86_64-efi": "grub-efi-amd64-bin"}

Progress = Callable[[str], None]


def recipe_hash() -> str:
    """A short hash of everything that determines the image's content."""
    data = json.dumps(
        [
            RECIPE_VERSION,
            SUITE,
            PACKAGES,
            CLOUD_CFG,
            NETWORKD,
            SSHD,
            FSTAB,
            GRUB_CFG,
            GRUB_EARLY,
            GRUB_PC_MODULES,
            GRUB_EFI_MODULES,
            DISK_SIZE,
            ESP_SIZE,
        ],
        sort_keys=True,
    )
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "agent-swarm" / "images"


def cached_image_path() -> Path:
    return cache_dir() / f"debian-12-amd64-{recipe_hash()}.qcow2"


def check_build_host() -> None:
    """Raise with an apt hint when something the build needs is missing."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise ConfigError(
            f"building the Debian image is supported on x86_64 hosts, not {platform.machine()}",
            hint="use `agent-swarm init-base --image PATH|URL` with a cloud image instead",
        )
    if os.geteuid() != 0:
        raise ConfigError(
            "building a base image needs root (mmdebstrap installs packages as root)",
            hint="run `sudo agent-swarm init-base --build debian-12`",
        )
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    missing += sorted(pkg for d, pkg in GRUB_DIRS.items() if not Path("/usr/lib/grub", d).is_dir())
    if missing:
        raise ProviderUnavailable(
            "missing tools to build the Debian image: " + ", ".join(missing),
            hint="apt-get install " + " ".join(missing),
        )


# ---- apt sources ---------------------------------------------------------------------------


def host_debian_sources(root: Path = Path("/")) -> list[str]:
    """One-line ``deb`` entries for the host's enabled Debian archives (any mirror).

    Reads ``/etc/apt/sources.list``, ``sources.list.d/*.list`` and deb822 ``*.sources``, and
    keeps the entries whose suite is bookworm (-updates, -security). The mirror host is
    whatever the host uses: nothing is hard-coded.
    """
    entries: list[str] = []
    apt = root / "etc/apt"
    one_line = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for f in one_line:
        if not f.is_file():
            continue
        for line in f.read_text(errors="replace").splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.match(r"deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.+)", line)
            if m and m.group(3).split("/")[0].startswith(SUITE):
                entries.append(f"deb {m.group(2)} {m.group(3)} main")
    for f in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", f.read_text(errors="replace")):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = v.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    if suite.startswith(SUITE):
                        entries.append(f"deb {uri} {suite} main")
    return list(dict.fromkeys(entries))


# ---- the build -----------------------------------------------------------------------------


def _run(cmd: list[str], what: str, log: Path, **kw: object) -> None:
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise AgentSwarmError(
            f"{what} failed (exit {r.returncode}): " + " | ".join(tail)[-300:],
            hint=f"the full log is {log}",
        )


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    p.chmod(mode)


def prepare_rootfs(root: Path, log: Path) -> None:
    """Make an installed tree image-ready (identity removed, config for cloud + serial)."""
    _write(root, "etc/fstab", FSTAB)
    _write(root, "etc/hostname", "localhost\n")
    _write(root, "etc/cloud/cloud.cfg.d/90_agent_swarm.cfg", CLOUD_CFG)
    _write(root, "etc/systemd/network/20-wired.network", NETWORKD)
    _write(root, "etc/ssh/sshd_config.d/50-agent-swarm.conf", SSHD)
    _write(root, "boot/grub/grub.cfg", GRUB_CFG)
    # Identity: every clone must boot as a new machine.
    _write(root, "etc/machine-id", "", 0o444)
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    resolv = root / "etc/resolv.conf"
    if resolv.exists() or resolv.is_symlink():
        resolv.unlink()
    resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    _run(
        ["chroot", str(root), "systemctl", "enable", "systemd-networkd", "systemd-resolved"],
        "enabling systemd-networkd",
        log,
    )
    # Leave no build leftovers.
    for d in ("var/lib/apt/lists", "var/cache/apt", "tmp", "var/tmp"):
        for p in (root / d).glob("*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.name != "lock":
                p.unlink()
    for p in (root / "var/log").rglob("*"):
        if p.is_file():
            p.write_bytes(b"")


def mbr(disk_signature: int) -> bytes:
    """MBR with GRUB's boot.img code, an ESP (0xEF) and a Linux root partition (0x83)."""
    boot = bytearray(Path("/usr/lib/grub/i386-pc/boot.img").read_bytes())
    if len(boot) != 512:
        raise AgentSwarmError("unexpected GRUB boot.img size")
    # Like grub-bios-setup for a hard disk: skip the boot-drive check (buggy BIOSes), and
    # core.img starts at sector 1 (the default kernel sector in boot.img).
    boot[0x66:0x68] = b"\x90\x90"
    struct.pack_into("<Q", boot, 0x5C, 1)
    boot[0x1B8:0x1BC] = struct.pack("<I", disk_signature)
    boot[0x1BC:0x1BE] = b"\0\0"
    boot[0x1BE:0x1FE] = bytes(64)

    def entry(active: bool, ptype: int, start: int, size: int) -> bytes:
        chs = b"\xfe\xff\xff"  # LBA only
        return struct.pack(
            "<B3sB3sII", 0x80 if active else 0, chs, ptype, chs, start // 512, size // 512
        )

    boot[0x1BE:0x1CE] = entry(False, 0xEF, ESP_START, ESP_SIZE)
    boot[0x1CE:0x1DE] = entry(True, 0x83, ROOT_START, DISK_SIZE - ROOT_START)
    boot[0x1FE:0x200] = b"\x55\xaa"
    return bytes(boot)


def embed_core(core: bytes) -> bytes:
    """Patch GRUB's core.img (diskboot + kernel) to load itself from sectors 2.. of the disk."""
    sectors = (len(core) + 511) // 512
    if sectors + 1 > ESP_START // 512:
        raise AgentSwarmError("GRUB core.img does not fit before the first partition")
    buf = bytearray(core + bytes(sectors * 512 - len(core)))
    # diskboot.img's blocklist (last 12 bytes of its sector): start=2, len, segment 0x820.
    start, _, seg = struct.unpack_from("<QHH", buf, 0x1F4)
    if start != 2 or seg != 0x820:
        raise AgentSwarmError("unexpected GRUB diskboot.img layout")
    struct.pack_into("<QHH", buf, 0x1F4, 2, sectors - 1, seg)
    return bytes(buf)


def build(dest: Path, *, progress: Progress = lambda s: None, keep_dir: Path | None = None) -> Path:
    """Build the image into ``dest`` (atomically: temp file + rename). Returns ``dest``."""
    check_build_host()
    sources = host_debian_sources()
    if not sources:
        raise ConfigError(
            "no Debian bookworm apt source is configured on this host",
            hint="the image is built from the host's apt mirror: add a bookworm entry to "
            "/etc/apt/sources.list.d/",
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=keep_dir or dest.parent))
    log = work / "build.log"
    try:
        root = work / "rootfs"
        progress("installing Debian 12 packages (mmdebstrap)")
        _run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--components=main",
                "--mode=root",
                "--include=" + ",".join(PACKAGES),
                SUITE,
                str(root),
                *sources,
            ],
            "mmdebstrap",
            log,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
        progress("preparing the system for cloud use")
        prepare_rootfs(root, log)

        progress("writing the disk (MBR, EFI system partition, ext4 root)")
        raw = work / "disk.raw"
        with open(raw, "wb") as f:
            f.truncate(DISK_SIZE)
        _run(
            [
                "mke2fs",
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                ROOT_LABEL,
                "-U",
                str(uuid.uuid4()),
                "-d",
                str(root),
                "-E",
                f"offset={ROOT_START}",
                str(raw),
                f"{(DISK_SIZE - ROOT_START) // 1024}k",
            ],
            "mke2fs",
            log,
        )

        progress("installing GRUB for BIOS and UEFI")
        early = work / "early.cfg"
        early.write_text(GRUB_EARLY)
        core, efi = work / "core.img", work / "BOOTX64.EFI"
        _run(
            [
                "grub-mkimage",
                "-O",
                "i386-pc",
                "-o",
                str(core),
                "-c",
                str(early),
                "-p",
                "/boot/grub",
                *GRUB_PC_MODULES,
            ],
            "grub-mkimage (BIOS)",
            log,
        )
        _run(
            [
                "grub-mkimage",
                "-O",
                "x86_64-efi",
                "-o",
                str(efi),
                "-c",
                str(early),
                "-p",
                "/boot/grub",
                *GRUB_EFI_MODULES,
            ],
            "grub-mkimage (UEFI)",
            log,
        )
        esp = work / "esp.img"
        _run(
            ["mkfs.fat", "-F", "32", "-n", "EFI", "-C", str(esp), str(ESP_SIZE // 1024)],
            "mkfs.fat",
            log,
        )
        mt = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
        _run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], "mmd", log, env=mt)
        _run(["mcopy", "-i", str(esp), str(efi), "::/EFI/BOOT/BOOTX64.EFI"], "mcopy", log, env=mt)
        sig = int.from_bytes(hashlib.sha256(recipe_hash().encode()).digest()[:4], "little")
        with open(raw, "r+b") as f:
            f.write(mbr(sig))
            f.write(embed_core(core.read_bytes()))
            f.seek(ESP_START)
            with open(esp, "rb") as e:
                shutil.copyfileobj(e, f, 1 << 20)

        progress("converting to qcow2")
        tmp = work / "disk.qcow2"
        _run(
            ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(tmp)],
            "qemu-img convert",
            log,
        )
        os.chmod(tmp, 0o644)
        # The kernel, for the KVM probe (agent_swarm.providers.libvirt.accel).
        shutil.copyfile(root / "vmlinuz", dest.with_suffix(".vmlinuz"))
        os.replace(tmp, dest)
    except BaseException:
        if keep_dir is None:
            # Keep the log for the error message; drop the big files.
            for p in ("rootfs", "disk.raw", "disk.qcow2", "esp.img"):
                q = work / p
                if q.is_dir():
                    shutil.rmtree(q, ignore_errors=True)
                elif q.exists():
                    q.unlink()
        raise
    shutil.rmtree(work, ignore_errors=True)
    return dest


def ensure_cached(progress: Progress = lambda s: None) -> Path:
    """The cached image for the current recipe, built if missing."""
    path = cached_image_path()
    if path.exists():
        progress(f"using cached image {path}")
        return path
    return build(path, progress=progress)
