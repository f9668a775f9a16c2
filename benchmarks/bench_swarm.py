"""Swarm operations through the real CLI and libvirtd, measured in the same run.

Prints medians and ratios:
  4. clone step (disk + seed ISO + domain define, no boot) for N = 1, 4, 8 via
     `bulk create --no-start` (goal: N=8 < 2x N=1), against N separate `create` commands
     run one after another; and per-VM time of N=32 against N=8 (goal <= 1.3x: one
     ssh_config write per bulk, not one per VM)
  5. `agent-swarm list` with 100 registered tasks (goal < 150 ms), against what the original
     tool did per listing: `virsh list --all` plus `qemu-img info` per VM
  6. `agent-swarm --help` (goal < 150 ms), against a bare `python -c pass` start

Needs root and a running libvirtd (benchmarks/run.sh starts it). VMs are defined but never
booted, on a tiny empty base image, in a private AGENT_SWARM_HOME removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [str(Path(sys.executable).with_name("agent-swarm"))]


def sh(*args: str, env: dict[str, str]) -> None:
    r = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{r.stdout}{r.stderr}")


def timed(*args: str, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    sh(*args, env=env)
    return time.perf_counter() - t0


def fmt(s: float) -> str:
    return f"{s * 1e3:8.1f} ms" if s < 1 else f"{s:8.2f} s "


def row(name: str, s: float, extra: str = "") -> None:
    print(f"  {name:<56} {fmt(s)}  {extra}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args()
    runs = 3 if args.quick else 7
    work = Path(tempfile.mkdtemp(prefix="as-bench-"))
    home = work / "home"
    env = {**os.environ, "AGENT_SWARM_HOME": str(home)}
    try:
        base = work / "tiny.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1G"], check=True)
        sh(*CLI, "init-base", "--image", str(base), "--name", "tiny", env=env)
        sh(
            *CLI, "project", "create", "bench", "--base", "tiny", "--no-start",
            "--cpus", "1", "--memory", "512M", "--disk", "1G", env=env,
        )  # fmt: skip
        sh(*CLI, "project", "stop", "bench", env=env)  # never booted: sealed as it is

        print(f"\n[4] clone step: disk + seed + define, no boot (median of {runs})")
        medians = {}
        for n in (1, 4, 8):
            names = [f"t{i}" for i in range(n)]
            bulk, seq = [], []
            for _ in range(runs):
                bulk.append(timed(*CLI, "bulk", "create", "bench", *names, "--no-start", env=env))
                sh(*CLI, "bulk", "delete", *names, env=env)
                t0 = time.perf_counter()
                for nm in names:
                    sh(*CLI, "create", "bench", nm, "--no-start", env=env)
                seq.append(time.perf_counter() - t0)
                sh(*CLI, "bulk", "delete", *names, env=env)
            medians[n] = statistics.median(bulk)
            s = statistics.median(seq)
            row(f"bulk create --no-start, N={n}", medians[n], f"{medians[n] / n * 1e3:.0f} ms/VM")
            row(f"{n} x `create --no-start`, one after another", s,
                f"bulk is {s / medians[n]:.1f}x faster")  # fmt: skip
        ratio = medians[8] / medians[1]
        print(f"  N=8 / N=1 = {ratio:.2f}  (goal < 2: {'met' if ratio < 2 else 'NOT met'})")

        print(f"\n[4b] bulk create stays linear: per-VM time, N=8 vs N=32 (median of {runs})")
        per_vm = {}
        for n in (8, 32):
            names = [f"s{i}" for i in range(n)]
            times = []
            for _ in range(runs):
                times.append(timed(*CLI, "bulk", "create", "bench", *names, "--no-start", env=env))
                sh(*CLI, "bulk", "delete", *names, env=env)
            per_vm[n] = statistics.median(times) / n
            row(f"bulk create --no-start, N={n}", statistics.median(times),
                f"{per_vm[n] * 1e3:.0f} ms/VM")  # fmt: skip
        lin = per_vm[32] / per_vm[8]
        verdict = "met" if lin <= 1.3 else "NOT met"
        print(f"  per VM, N=32 / N=8 = {lin:.2f}  (goal <= 1.3: {verdict})")

        print(f"\n[5] list with 100 registered tasks (median of {runs})")
        names = [f"l{i}" for i in range(100)]
        sh(*CLI, "bulk", "create", "bench", *names, "--no-start", env=env)
        ours = statistics.median(timed(*CLI, "list", env=env) for _ in range(runs))

        def theirs_once() -> float:
            t0 = time.perf_counter()
            sh("virsh", "-c", "qemu:///system", "list", "--all", "--name", env=env)
            for nm in names:
                sh("qemu-img", "info", "--output=json", "-U",
                   str(home / "tasks" / nm / "disk.qcow2"), env=env)  # fmt: skip
            return time.perf_counter() - t0

        theirs = statistics.median(theirs_once() for _ in range(max(1, runs // 2)))
        row(
            "agent-swarm list (100 tasks)",
            ours,
            f"goal < 150 ms: {'met' if ours < 0.15 else 'NOT met'}",
        )
        row(
            "virsh list --all + qemu-img info per VM",
            theirs,
            f"ours is {theirs / ours:.1f}x faster",
        )
        sh(*CLI, "bulk", "delete", "--project", "bench", env=env)

        print(f"\n[6] start-up (median of {runs * 2})")
        helps = statistics.median(timed(*CLI, "--help", env=env) for _ in range(runs * 2))
        bare = statistics.median(
            timed(sys.executable, "-c", "pass", env=env) for _ in range(runs * 2)
        )
        row("agent-swarm --help", helps, f"goal < 150 ms: {'met' if helps < 0.15 else 'NOT met'}")
        row("python -c pass (interpreter floor)", bare, f"--help costs {helps / bare:.1f}x that")
        sh(*CLI, "project", "delete", "bench", env=env)
    finally:
        subprocess.run([*CLI, "bulk", "delete", "--project", "bench"], env=env, capture_output=True)
        subprocess.run([*CLI, "project", "delete", "bench"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
