"""Warm clones against cold boots, real guests, measured in the same run (issue 10).

For N = 1, 4, 8 tasks created at once (N=1: `create`, else `bulk create`), warm (resumed from
the project's warm template) and cold (`--cold`: booted from the template's disk):
  * ready-to-SSH: from the request until every task has answered a command over SSH with its
    own pinned host key (both paths end with one); for N=1 warm, where the time goes;
  * host memory added: the drop of MemAvailable from before the create to 10 s after ready,
    and the PSS of each QEMU then.
Goals on a 2-vCPU TCG host: warm N=1 <= 1/20 of cold; all 4 warm ready <= 1/10 of all 4 cold;
8 warm clones add <= 1/3 of the host memory 8 cold ones add.

Usage: bash benchmarks/run.sh --warm [--quick]   (needs root and libvirtd; builds the base
image on first use). --quick: 1 warm N=1 repetition instead of 5, one cold N=1 instead of 3.
Cold N=4/8 run once (minutes each under emulation). Everything in a private AGENT_SWARM_HOME,
removed afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [str(Path(sys.executable).with_name("agent-swarm"))]
SETTLE_S = 10.0


def cli(*args: str, env: dict[str, str], timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if r.returncode != 0:
        raise SystemExit(f"agent-swarm {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return r


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) << 10
    raise SystemExit("no MemAvailable in /proc/meminfo")


def qemu_pss(home: Path, names: list[str]) -> list[int]:
    """PSS (bytes) of each task's QEMU, found by its libvirt domain name."""
    tag = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:6]
    out = []
    for n in names:
        pidfile = Path(f"/run/libvirt/qemu/agent-swarm-{tag}-task-{n}.pid")
        try:
            pid = int(pidfile.read_text().strip())
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except (OSError, ValueError):
            continue
        m = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
        if m:
            out.append(int(m.group(1)) << 10)
    return out


def one_round(
    env: dict[str, str], home: Path, names: list[str], *, cold: bool
) -> tuple[float, int, list[int], str]:
    """Create ``names`` at once; (seconds until all ready, MemAvailable drop, PSS each,
    stderr)."""
    flag = ["--cold"] if cold else []
    before = mem_available()
    t0 = time.perf_counter()
    if len(names) == 1:
        r = cli("create", "bw", names[0], *flag, env=env)
    else:
        r = cli("bulk", "create", "bw", *names, "--force", *flag, env=env)
    ready = time.perf_counter() - t0
    time.sleep(SETTLE_S)
    drop = before - mem_available()
    pss = qemu_pss(home, names)
    cli("bulk", "delete", *names, env=env)
    time.sleep(2)
    return ready, drop, pss, r.stderr


def mib(n: float) -> str:
    return f"{n / (1 << 20):7.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", default="1,4,8", help="N values (default 1,4,8)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="as-bench-warm-"))
    home = work / "home"
    env = {**os.environ, "AGENT_SWARM_HOME": str(home)}
    try:
        cli("init-base", "--build", "debian-12", env=env)
        t0 = time.perf_counter()
        cli("project", "create", "bw", "--memory", "1G", "--cpus", "2", env=env)
        cli("project", "stop", "bw", env=env)
        sealed = time.perf_counter() - t0
        t0 = time.perf_counter()
        cli("project", "warm", "bw", env=env)
        warm_s = time.perf_counter() - t0
        wdir = home / "projects/bw/gen-1.warm"
        print(
            f"project created and sealed in {sealed:.0f} s; `project warm` (one cold boot + "
            f"save) {warm_s:.1f} s; state {(wdir / 'state').stat().st_size >> 10} KiB, RAM file "
            f"{(wdir / 'ram').stat().st_blocks * 512 >> 20} MiB written of 1024"
        )
        results: dict[tuple[int, bool], dict[str, object]] = {}
        for n in sizes:
            for cold in (False, True):
                reps = 1 if (cold and n > 1) else (1 if args.quick else (3 if cold else 5))
                times, drops, psss, errs = [], [], [], []
                for rep in range(reps):
                    names = [f"{'c' if cold else 'w'}{n}-{rep}-{i}" for i in range(n)]
                    ready, drop, pss, err = one_round(env, home, names, cold=cold)
                    times.append(ready)
                    drops.append(drop)
                    psss += pss
                    errs.append(err)
                    print(
                        f"  N={n} {'cold' if cold else 'warm'} run {rep + 1}/{reps}: ready "
                        f"{ready:6.2f} s, MemAvailable -{mib(drop)}, PSS/VM "
                        f"{mib(statistics.median(pss)) if pss else '?'}",
                        flush=True,
                    )
                results[(n, cold)] = {
                    "ready": statistics.median(times),
                    "drop": statistics.median(drops),
                    "pss": statistics.median(psss) if psss else 0,
                    "stderr": errs,
                }
        print()
        print(
            f"{'N':>3} {'warm ready':>12} {'cold ready':>12} {'ratio':>8}   "
            f"{'warm mem':>12} {'cold mem':>12} {'ratio':>7}   {'PSS warm':>10} {'PSS cold':>10}"
        )
        for n in sizes:
            w, c = results[(n, False)], results[(n, True)]
            wr, cr = float(w["ready"]), float(c["ready"])  # type: ignore[arg-type]
            wd, cd = float(w["drop"]), float(c["drop"])  # type: ignore[arg-type]
            print(
                f"{n:>3} {wr:11.2f}s {cr:11.2f}s {wr / cr:8.3f}   {mib(wd):>12} {mib(cd):>12} "
                f"{wd / cd if cd else float('nan'):7.3f}   {mib(float(w['pss'])):>10} "  # type: ignore[arg-type]
                f"{mib(float(c['pss'])):>10}"  # type: ignore[arg-type]
            )
        if 1 in sizes:
            errs = results[(1, False)]["stderr"]
            assert isinstance(errs, list)
            print("\nwhere the time goes, warm N=1 (last run):")
            for line in errs[-1].splitlines():
                if "resumed in" in line or "SSH answered" in line:
                    print("  " + line.strip())
        goals = []
        if 1 in sizes:
            r = results[(1, False)]["ready"] / results[(1, True)]["ready"]  # type: ignore[operator]
            goals.append(f"warm N=1 <= 1/20 of cold: {r:.3f} ({'met' if r <= 0.05 else 'NOT met'})")
        if 4 in sizes:
            r = results[(4, False)]["ready"] / results[(4, True)]["ready"]  # type: ignore[operator]
            goals.append(f"4 warm <= 1/10 of 4 cold: {r:.3f} ({'met' if r <= 0.1 else 'NOT met'})")
        if 8 in sizes:
            cd = results[(8, True)]["drop"]
            r = results[(8, False)]["drop"] / cd if cd else float("nan")  # type: ignore[operator]
            goals.append(
                f"8 warm add <= 1/3 of 8 cold's memory: {r:.3f} "
                f"({'met' if r <= 1 / 3 else 'NOT met'})"
            )
        print("\n" + "\n".join(goals))
    finally:
        subprocess.run([*CLI, "bulk", "delete", "--project", "bw"], env=env, capture_output=True)
        subprocess.run([*CLI, "project", "delete", "bw"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
