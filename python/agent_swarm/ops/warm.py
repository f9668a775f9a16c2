"""Warm templates and warm clones: a task resumed from its template's saved memory in seconds
instead of a cold boot (docs/warm-clones.md).

A warm template belongs to one sealed generation and lives beside it,
``projects/<p>/gen-<n>.warm/``, read-only once saved:

    disk.qcow2   an overlay on gen-<n>: the template's disk at the moment of the save; the
                 read-only backing file of every clone's disk
    ram          the guest's RAM (a file the template mapped shared; clones map it privately)
    state        the device state (about 1 MB), saved with the RAM left in the file
    warm.json    the fingerprint a clone must match, checksums, the template's shape

Making one (journal op ``warm``, on the project): boot a VM on a new overlay of the
generation, wait until cloud-init is done and the system is idle, save, power off, checksum,
rename ``gen-<n>.warm.tmp`` into place, record it on the generation. A clone: a qcow2 overlay
on the template's disk, a VM defined with the template's machine type and MAC that starts in
the incoming state, the state loaded, resumed; then, through the guest agent and before
anything can log in, the clock, a new SSH host key, hostname, machine-id and a reseeded
kernel RNG (:data:`IDENTITY_PUSH`); ready once SSH answers with the clone's own pinned key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_swarm import disks
from agent_swarm.errors import AgentSwarmError, InvalidState, ProviderError, Timeout
from agent_swarm.fsutil import atomic_write
from agent_swarm.journal import Operation, Recovery
from agent_swarm.models import Generation, JournalEntry, Project, VMSpec

if TYPE_CHECKING:
    from agent_swarm.core import Core
    from agent_swarm.providers.base import GuestAgent, Provider
    from agent_swarm.ssh import keys

META = "warm.json"
META_VERSION = 1
AGENT_TIMEOUT = float(os.environ.get("AGENT_SWARM_BOOT_TIMEOUT", "300"))
IDLE_TIMEOUT = 120.0

# Run as root by the guest agent in a resumed clone (perl: always in Debian, and it starts in
# 0.1 s under emulation where python3 takes 0.4 s), its data on stdin, never in argv
# (:func:`encode_payload`). The kernel RNG: a host seed credited with RNDADDENTROPY, then
# RNDRESEEDCRNG, so the clone's CRNG no longer shares its template's state (the Debian cloud
# kernel has no vmgenid driver). sshd re-executes itself on SIGHUP and loads the new key.
IDENTITY_PUSH = r"""
use strict; use warnings; use Fcntl;
my $in = do { local $/; <STDIN> };
my ($now, $h, $mid, $seed, $pub, $key) = split(/\n/, $in, 6);
system("date", "-u", "-s", "\@$now") == 0 or die "date: $?\n";
$seed = pack("H*", $seed);
open(my $r, ">", "/dev/urandom") or die "urandom: $!\n";
ioctl($r, 0x40085203, pack("ii", length($seed) * 8, length($seed)) . $seed)
    or die "RNDADDENTROPY: $!\n";
ioctl($r, 0x5207, 0) or die "RNDRESEEDCRNG: $!\n";
close($r);
sub slurp {
    open(my $f, "<", $_[0]) or return "";
    my $t = do { local $/; <$f> } // "";
    chomp($t);
    $t;
}
sub put {
    my ($path, $text, $mode) = @_;
    my $tmp = "$path.agent-swarm-tmp";
    sysopen(my $f, $tmp, O_WRONLY | O_CREAT | O_TRUNC, $mode) or die "$tmp: $!\n";
    print $f $text or die "$tmp: $!\n";
    close($f) or die "$tmp: $!\n";
    chmod($mode, $tmp);
    rename($tmp, $path) or die "$path: $!\n";
}
unlink(glob("/etc/ssh/ssh_host_*"));
put("/etc/ssh/ssh_host_ed25519_key", $key, 0600);
put("/etc/ssh/ssh_host_ed25519_key.pub", "$pub\n", 0644);
my $old = slurp("/etc/machine-id");
put("/etc/machine-id", "$mid\n", 0444);
# journald keeps writing under the old ID until the next boot: let journalctl find it
for my $j ("/var/log/journal", "/run/log/journal") {
    symlink($old, "$j/$mid") if $old =~ /^[0-9a-f]{32}$/ && -d "$j/$old" && !-e "$j/$mid";
}
put("/etc/hostname", "$h\n", 0644);
system("hostname", $h) == 0 or die "hostname: $?\n";
my @hosts;
if (open(my $f, "<", "/etc/hosts")) {
    @hosts = grep { !/^127\.0\.1\.1\s/ } map { chomp; $_ } <$f>;
    close($f);
}
put("/etc/hosts", join("\n", @hosts, "127.0.1.1 $h $h") . "\n", 0644);
my $pid = 0;
if (open(my $p, "<", "/run/sshd.pid")) { $pid = <$p> // 0; chomp($pid); close($p); }
unless ($pid =~ /^\d+$/ && $pid > 1 && kill("HUP", $pid)) {
    system("systemctl", "reload-or-restart", "ssh") == 0 or die "reloading sshd: $?\n";
}
my (undef, $b64) = split(/ /, slurp("/etc/ssh/ssh_host_ed25519_key.pub"));
my @keys = sort map { (split m{/})[-1] } glob("/etc/ssh/ssh_host_*");
print join("\n", "hostname=" . slurp("/proc/sys/kernel/hostname"), "pub=$b64",
           "keys=" . join(",", @keys), "machine_id=" . slurp("/etc/machine-id")), "\n";
"""


def encode_payload(
    hostname: str, machine_id: str, seed: str, pub: str, key: str, now_ns: int | None = None
) -> bytes:
    """What :data:`IDENTITY_PUSH` reads on stdin: the host's time (``date -s @S.N``; the guest
    is behind by the latency of starting the script, a few hundred ms at most), then one line
    each, the private key last."""
    ns = time.time_ns() if now_ns is None else now_ns
    now = f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"
    for v in (hostname, machine_id, seed, pub):
        if "\n" in v:
            raise ValueError("a payload field holds a newline")
    return f"{now}\n{hostname}\n{machine_id}\n{seed}\n{pub}\n{key}".encode()


def decode_payload(data: bytes) -> dict[str, str]:
    """The inverse of :func:`encode_payload` (for test doubles of the guest)."""
    now, h, mid, seed, pub, key = data.decode().split("\n", 5)
    return {"now": now, "hostname": h, "machine_id": mid, "seed": seed, "pub": pub, "key": key}


def parse_report(out: bytes) -> dict[str, str]:
    """What :data:`IDENTITY_PUSH` prints: ``name=value`` lines."""
    report = {}
    for line in out.decode(errors="replace").splitlines():
        k, sep, v = line.partition("=")
        if sep:
            report[k.strip()] = v.strip()
    return report


# In the template before the save, once cloud-init is done: boot finished, disks synced.
SETTLE = "sudo sh -c 'timeout 90 systemctl is-system-running --wait >/dev/null 2>&1; sync'"


@dataclass(frozen=True)
class WarmTemplate:
    project: str
    generation: int
    dir: Path
    meta: dict[str, Any]

    @property
    def disk(self) -> Path:
        return self.dir / "disk.qcow2"

    @property
    def ram(self) -> Path:
        return self.dir / "ram"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    @property
    def cpus(self) -> int:
        return int(self.meta["cpus"])

    @property
    def memory_mib(self) -> int:
        return int(self.meta["memory_mib"])

    def files(self) -> list[Path]:
        return [self.disk, self.ram, self.state]

    def size(self) -> int:
        """Bytes allocated on the host (the RAM file is sparse)."""
        total = 0
        for f in self.files():
            with contextlib.suppress(OSError):
                total += f.stat().st_blocks * 512
        return total


def _sha256(path: Path) -> str:
    """sha256 of the file's bytes (holes as zeros: same digest as a plain read), reading only
    the allocated extents, and leaving no pages of it in the page cache that nothing maps (a
    1 GiB RAM file would otherwise look resident and shared in `status`)."""
    h = hashlib.sha256()
    zeros = bytes(1 << 20)
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                data = size
            while pos < data:  # a hole: zeros
                n = min(len(zeros), data - pos)
                h.update(zeros[:n])
                pos += n
            if pos >= size:
                break
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            f.seek(pos)
            while pos < hole:
                chunk = f.read(min(1 << 20, hole - pos))
                if not chunk:
                    break
                h.update(chunk)
                pos += len(chunk)
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return h.hexdigest()


def resident_bytes(path: Path) -> int | None:
    """Bytes of ``path`` in the page cache (util-linux ``fincore``; None without it)."""
    import subprocess

    exe = shutil.which("fincore")
    if exe is None:
        return None
    try:
        r = subprocess.run(
            [exe, "--bytes", "--noheadings", "--output", "RES", str(path)],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return int(r.stdout.split()[0]) if r.returncode == 0 and r.stdout.split() else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


class WarmOp(Operation):
    """Journaled on the project (no seal or gc of it meanwhile). Nothing is visible until the
    last step renames the directory and records it, so recovery removes what is there."""

    op = "warm"
    steps = ("begin", "booted", "saved", "renamed")

    def __init__(self, core: Core, warm: Warm) -> None:
        super().__init__(core)
        self.warm = warm

    def recover(self, e: JournalEntry) -> Recovery:
        def clean() -> None:
            self.warm.cleanup_unregistered(e.name, e.provider or None)
            self.reg.journal_end(e.id)

        return Recovery(
            "; no warm template was recorded",
            "remove the template VM and its unfinished files",
            clean,
        )


class Warm:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.reg = core.reg
        self.op = WarmOp(core, self)
        self._meta: dict[str, dict[str, Any]] = {}

    # ---- where ----
    def dir_for(self, project: str, generation: int) -> Path:
        return self.core.layout.vm_dir("project", project) / f"gen-{generation}.warm"

    def template_spec(self, p: Project, g: Generation, d: Path, port: int) -> VMSpec:
        return VMSpec(
            kind="warm",
            name=f"{p.name}.{g.generation}",
            cpus=g.cpus or p.cpus,
            memory_mib=g.memory_mib or p.memory_mib,
            disk=d / "disk.qcow2",
            seed=d / "cidata.iso",
            serial_log=d / "serial.log",
            ssh_port=port,
            network=p.network,
            memory_file=d / "ram",
            memory_shared=True,
        )

    def template(self, g: Generation) -> WarmTemplate | None:
        """The generation's recorded warm template, if its files are there."""
        if not g.memory_image or (meta := self.meta_of(g.memory_image)) is None:
            return None
        return WarmTemplate(g.project, g.generation, Path(g.memory_image), meta)

    # ---- making one ----
    def make(self, project: str, *, force: bool = False) -> WarmTemplate:
        """Boot the project's newest generation once and save it running (see the module)."""
        from agent_swarm.errors import UnsupportedByProvider
        from agent_swarm.guest import new_host_key, write_seed
        from agent_swarm.ops.vms import candidate_ports, check_space

        core = self.core
        p = self.reg.get_project(project)
        prov = core.provider_of(p)
        if not prov.capabilities.warm_clones:
            raise UnsupportedByProvider("warm templates", provider=prov.name)
        g = self.reg.latest_generation(project)
        if g is None:
            raise InvalidState(
                f"project {project!r} has no template yet",
                hint=f"set it up, then seal it with `agent-swarm project stop {project} --warm`",
            )
        if prov.capabilities.disk_format != "qcow2" or g.format != "qcow2":
            raise UnsupportedByProvider("warm templates of non-qcow2 disks", provider=prov.name)
        if p.network not in ("user",):
            raise InvalidState(
                f"project {project!r} uses the {p.network!r} network: warm clones need the "
                "user network (each clone its own, with the template's MAC)",
            )
        old = self.template(g)
        if old is not None and not force:
            core.progress(f"project {project}: generation {g.generation} is already warm")
            return old
        check_space(f"cannot make a warm template of {project}")
        final = self.dir_for(project, g.generation)
        tmp = final.with_name(final.name + ".tmp")
        with self.op.run("project", project, provider=p.provider) as op:
            if old is not None or final.exists():
                self.drop(project, g.generation)  # refused while tasks resumed from it
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(mode=0o700, parents=True)
            port = next(candidate_ports())
            spec = self.template_spec(p, g, tmp, port)
            fingerprint = prov.warm_fingerprint(spec)
            # The clones run the exact machine type and MAC (each its own user network).
            mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
            spec = dataclasses.replace(spec, machine=fingerprint.get("machine") or None, mac=mac)
            host = new_host_key("template", f"{project}-{g.generation}")
            try:
                disks.backend_for("qcow2").overlay(spec.disk, Path(g.path))
                assert spec.memory_file is not None
                with open(spec.memory_file, "wb") as ram:
                    ram.truncate(spec.memory_mib << 20)  # sparse; QEMU maps it
                os.chmod(spec.memory_file, 0o600)
                write_seed(spec, host, project=project, first_boot_setup=False)
                prov.define(spec)
                core.progress(
                    f"project {project}: booting generation {g.generation} once to save it "
                    "running (a warm template)"
                )
                core.vms.boot(prov, spec)
                op.step("booted")
                self._settle(prov, spec, host.public_openssh, f"warm template of {project}")
                core.progress(f"project {project}: saving the running template")
                t0 = time.monotonic()
                prov.save_running_state(spec, tmp / "state")
                save_s = time.monotonic() - t0
                op.step("saved")
            except BaseException:
                with contextlib.suppress(Exception):
                    prov.delete(spec)
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            prov.delete(spec)
            for f in (spec.disk, spec.memory_file, tmp / "state"):
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            meta = {
                "version": META_VERSION,
                "project": project,
                "generation": g.generation,
                "provider": prov.name,
                "cpus": spec.cpus,
                "memory_mib": spec.memory_mib,
                "network": spec.network,
                "mac": mac,
                "fingerprint": fingerprint,
                "host_key": host.public_openssh,
                "state_sha256": _sha256(tmp / "state"),
                "ram_sha256": _sha256(spec.memory_file),
                "disk_sha256": _sha256(spec.disk),
                "stamps": {
                    "state": _stamp(tmp / "state"),
                    "ram": _stamp(spec.memory_file),
                    "disk": _stamp(spec.disk),
                },
                "save_seconds": round(save_s, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            for f in (spec.disk, spec.memory_file, tmp / "state", spec.seed):
                os.chmod(f, 0o444)
            for junk in ("passt.log", "passt.stderr"):
                (tmp / junk).unlink(missing_ok=True)
            atomic_write(tmp / META, json.dumps(meta, indent=2) + "\n", mode=0o444)
            os.rename(tmp, final)  # keeps the mtimes the stamps recorded
            op.step("renamed")
            self.reg.set_warm(project, g.generation, str(final), host.public_openssh)
        core.progress(
            f"project {project}: generation {g.generation} is warm "
            f"(state {(final / 'state').stat().st_size >> 10} KiB, saved in {save_s:.2f} s)"
        )
        return WarmTemplate(project, g.generation, final, meta)

    def _settle(self, prov: Provider, spec: VMSpec, host_key: str, what: str) -> None:
        """Until SSH answers with the template's key, cloud-init is done and boot is over."""
        self.core.guest.wait_ready(prov, spec, host_key, what)
        s = self.core.guest.session(prov, spec, host_key, what, timeout=AGENT_TIMEOUT)
        try:
            s.run(SETTLE, timeout=IDLE_TIMEOUT)
        finally:
            s.close()
        agent = prov.guest_agent(spec)
        if agent is None or not agent.ping(30):
            raise InvalidState(
                f"{what}: the guest agent does not answer; warm clones need it to give each "
                "clone its own identity",
                hint="the base image must include qemu-guest-agent",
            )

    # ---- removing ----
    def remove(self, project: str) -> bool:
        """Remove the newest generation's warm template (`project warm --drop`), holding the
        project's journal slot (no `warm` or seal meanwhile). True if there was one."""
        latest = self.reg.latest_generation(project)
        if latest is None:
            return False
        with self.op.run("project", project, provider=self.reg.get_project(project).provider):
            return self.drop(project, latest.generation)

    def drop(self, project: str, generation: int) -> bool:
        """Forget and remove a generation's warm template (refused while tasks resumed from
        it). True if there was one."""
        g = self.reg.get_generation(project, generation)
        d = self.dir_for(project, generation)
        if not g.memory_image and not d.exists():
            return False
        self.reg.set_warm(project, generation, None, "")
        self._meta.pop(g.memory_image or "", None)
        for root in {d, Path(g.memory_image or d)}:
            shutil.rmtree(root, ignore_errors=True)
        return True

    def cleanup_unregistered(self, project: str, provider_name: str | None) -> None:
        """After an interrupted ``warm``: the template VM and any unrecorded warm files."""
        gens = self.reg.list_generations(project)
        recorded = {g.memory_image for g in gens if g.memory_image}
        prov = None
        try:
            prov = self.core.provider(provider_name) if provider_name else None
        except AgentSwarmError:
            prov = None
        proj_dir = self.core.layout.vm_dir("project", project)
        for g in gens:
            if prov is not None:
                prov.delete(self.stub_spec(project, g.generation))
        if proj_dir.is_dir():
            for d in proj_dir.glob("gen-*.warm*"):
                if str(d) not in recorded:
                    shutil.rmtree(d, ignore_errors=True)

    def stub_spec(self, project: str, generation: int) -> VMSpec:
        d = self.dir_for(project, generation)
        d = d.with_name(d.name + ".tmp")
        return VMSpec(
            kind="warm",
            name=f"{project}.{generation}",
            cpus=1,
            memory_mib=256,
            disk=d / "disk.qcow2",
            seed=d,
            serial_log=d,
            ssh_port=0,
        )

    # ---- using one ----
    def usable(
        self, prov: Provider, p: Project, cpus: int, memory_mib: int, network: str
    ) -> tuple[WarmTemplate | None, str | None]:
        """The newest generation's warm template if a clone of this shape can resume from it
        (None, and why not, else; why is None when there simply is no template)."""
        if not prov.capabilities.warm_clones:
            return None, None
        g = self.reg.latest_generation(p.name)
        if g is None:
            return None, None
        t = self.template(g)
        if t is None:
            if g.memory_image:
                return None, f"the warm template of generation {g.generation} is gone"
            return None, None
        if t.meta.get("version") != META_VERSION or t.meta.get("provider") != prov.name:
            return None, "the warm template was made by another version or provider"
        if cpus != t.cpus or memory_mib != t.memory_mib:
            return None, (
                f"the warm template has {t.cpus} vCPUs and {t.memory_mib} MiB, this task "
                f"{cpus} vCPUs and {memory_mib} MiB"
            )
        if network != t.meta.get("network"):
            return None, f"the warm template uses the {t.meta.get('network')!r} network"
        stamps = t.meta.get("stamps", {})
        for key, f in (("state", t.state), ("ram", t.ram), ("disk", t.disk)):
            try:
                now = _stamp(f)
            except OSError:
                return None, f"the warm template's {key} file is gone"
            if now != stamps.get(key):
                return None, (
                    f"the warm template's {key} file changed since it was saved "
                    "(`agent-swarm doctor` checks it)"
                )
        return t, None

    def plan(
        self, prov: Provider, p: Project, name: str, cpus: int, memory_mib: int
    ) -> tuple[WarmTemplate | None, str | None]:
        """:meth:`usable`, then the fingerprint of a clone of this shape on this host now and
        the state file's checksum."""
        t, why = self.usable(prov, p, cpus, memory_mib, p.network)
        if t is None:
            return None, why
        shape = VMSpec(
            kind="task",
            name=name,
            cpus=cpus,
            memory_mib=memory_mib,
            disk=Path("/"),
            seed=Path("/"),
            serial_log=Path("/"),
            ssh_port=0,
            network=p.network,
        )
        now = prov.warm_fingerprint(self.clone_spec(shape, t))
        then = t.meta.get("fingerprint", {})
        diff = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
        if diff:
            return None, (
                "this host changed since the warm template was saved (" + ", ".join(diff) + ")"
            )
        if _sha256(t.state) != t.meta.get("state_sha256"):
            return None, "the warm template's state file does not match its checksum"
        return t, None

    def clone_spec(self, spec: VMSpec, t: WarmTemplate) -> VMSpec:
        """A clone's definition: :meth:`resumed_spec` waiting for the saved state."""
        return dataclasses.replace(self.resumed_spec(spec, t.dir, t.meta), incoming=True)

    @staticmethod
    def resumed_spec(spec: VMSpec, d: Path, meta: dict[str, Any]) -> VMSpec:
        """Every definition of a task resumed from the template in ``d`` (or forked from
        one): the template's RAM file mapped privately, its MAC and exact machine type."""
        return dataclasses.replace(
            spec,
            memory_file=d / "ram",
            memory_shared=False,
            mac=meta.get("mac") or None,
            machine=meta.get("fingerprint", {}).get("machine") or None,
        )

    def meta_of(self, d: str) -> dict[str, Any] | None:
        """The ``warm.json`` of a template directory (cached per Core), None if unreadable."""
        if d not in self._meta:
            try:
                self._meta[d] = json.loads((Path(d) / META).read_text())
            except (OSError, ValueError):
                return None
        return self._meta[d]

    def resume(
        self,
        prov: Provider,
        spec: VMSpec,
        state: Path,
        host: keys.KeyPair,
        what: str,
        *,
        shared_memory: bool = True,
    ) -> dict[str, float]:
        """Resume the defined clone (a warm template's, or a fork) from ``state`` and give it
        its identity; timings (seconds). On failure it is powered off."""
        times: dict[str, float] = {}
        t0 = time.monotonic()
        prov.resume_from_state(spec, state, shared_memory=shared_memory)
        times["resumed"] = time.monotonic() - t0
        try:
            agent = prov.guest_agent(spec)
            if agent is None:
                raise ProviderError(f"{what}: no guest agent to give the clone its identity")
            deadline = time.monotonic() + 60
            while not agent.ping(5):
                if time.monotonic() > deadline:
                    raise Timeout(f"{what}: the resumed guest's agent does not answer")
            times["agent"] = time.monotonic() - t0
            self.push_identity(agent, spec, host, what)
            times["identity"] = time.monotonic() - t0
        except BaseException:
            prov.stop(spec, force=True)
            raise
        return times

    def push_identity(self, agent: GuestAgent, spec: VMSpec, host: keys.KeyPair, what: str) -> None:
        """The clock and the new identity, set through the guest agent, then read back: a
        clone that did not take it is refused. (The agent's own guest-set-time also writes the
        hardware clock, which waits for the RTC's next second: 0.9 s here.)"""
        machine_id = secrets.token_hex(16)
        payload = encode_payload(
            spec.name, machine_id, secrets.token_hex(64), host.public_openssh, host.private_openssh
        )
        rc, out, err = agent.exec(["/usr/bin/perl", "-e", IDENTITY_PUSH], payload, timeout=120)
        if rc != 0:
            from agent_swarm.textsafe import sanitize

            tail = sanitize(err.decode(errors="replace"), max_len=300, keep_newlines=False)
            raise ProviderError(f"{what}: giving the clone its identity failed: {tail}")
        got = parse_report(out)
        want = {
            "hostname": spec.name,
            "machine_id": machine_id,
            "pub": host.public_openssh.split()[1],
            "keys": "ssh_host_ed25519_key,ssh_host_ed25519_key.pub",
        }
        wrong = sorted(k for k, v in want.items() if got.get(k) != v)
        if wrong:
            raise ProviderError(
                f"{what}: the clone did not take its new identity ({', '.join(wrong)})"
            )

    # ---- status ----
    def summary(self, g: Generation) -> dict[str, Any] | None:
        """A generation's warm template for `status`: bytes on disk, the RAM file's written
        and in-memory bytes (its page-cache pages are what resumed tasks share), its tasks."""
        t = self.template(g)
        if t is None:
            return None
        clones = [x.name for x in self.reg.list_tasks(g.project) if x.warm_from == str(t.dir)]
        try:
            ram_bytes = t.ram.stat().st_blocks * 512
        except OSError:
            ram_bytes = 0
        return {
            "path": str(t.dir),
            "bytes": t.size(),
            "memory_mib": t.memory_mib,
            "ram_bytes": ram_bytes,
            "shared_bytes": resident_bytes(t.ram),
            "clones": clones,
            "created": t.meta.get("created"),
        }

    # ---- doctor ----
    def problems(self, t: WarmTemplate) -> list[str]:
        """Full checksums of the template's files (doctor)."""
        out = []
        for key, f in (("state", t.state), ("ram", t.ram), ("disk", t.disk)):
            try:
                ok = _sha256(f) == t.meta.get(f"{key}_sha256")
            except OSError:
                out.append(f"{key} file {f} is gone")
                continue
            if not ok:
                out.append(f"{key} file {f} does not match its checksum")
        return out
