"""agent_swarm.native against the tools it replaces, measured in the same run.

Prints medians and ratios:
  1. create_qcow2_overlay  vs  `qemu-img create -f qcow2 -b BASE -F qcow2` (goal >= 20x faster)
  2. clone_file (reflink, XFS) on a 100 MB and a 10 GB sparse-filled image
     (goal: 10 GB within 1.5x of 100 MB)  vs  `cp --reflink=never` full copy
  3. image_info  vs  `qemu-img info --output=json`
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from agent_swarm import native


def median_s(
    fn: Callable[[int], None], runs: int, setup: Callable[[int], None] | None = None
) -> float:
    times = []
    for i in range(runs):
        if setup:
            setup(i)
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fmt(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:8.1f} µs"
    if s < 1:
        return f"{s * 1e3:8.2f} ms"
    return f"{s:8.2f} s "


def row(name: str, s: float, extra: str = "") -> None:
    print(f"  {name:<52} {fmt(s)}  {extra}")


def bench_overlay(work: Path, runs: int) -> None:
    print(f"\n[1] qcow2 overlay creation (median of {runs})")
    base = work / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "10G"], check=True)
    d = work / "ov"
    d.mkdir()
    ours = median_s(lambda i: native.create_qcow2_overlay(d / f"n{i}.qcow2", base), runs)
    theirs = median_s(
        lambda i: subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                str(base),
                "-F",
                "qcow2",
                str(d / f"q{i}.qcow2"),
            ],
            check=True,
        ),
        runs,
    )
    row("agent_swarm.native.create_qcow2_overlay", ours)
    row("qemu-img create -f qcow2 -b ... -F qcow2", theirs)
    ratio = theirs / ours
    print(
        f"  => native is {ratio:.0f}x faster (goal >= 20x: {'met' if ratio >= 20 else 'NOT met'})"
    )
    shutil.rmtree(d)


def bench_info(work: Path, runs: int) -> None:
    print(f"\n[3] image inspection (median of {runs})")
    base = work / "base.qcow2"
    top = work / "top.qcow2"
    native.create_qcow2_overlay(top, base)
    ours = median_s(lambda i: native.image_info(top), runs)
    theirs = median_s(
        lambda i: subprocess.run(
            ["qemu-img", "info", "--output=json", str(top)], check=True, capture_output=True
        ),
        runs,
    )
    row("agent_swarm.native.image_info (with chain)", ours)
    row("qemu-img info --output=json", theirs)
    print(f"  => native is {theirs / ours:.0f}x faster")


@contextlib.contextmanager
def xfs_scratch(size_gib: int = 24) -> Iterator[Path | None]:
    if os.geteuid() != 0 or not shutil.which("mkfs.xfs"):
        print("  (skipped: needs root and mkfs.xfs for a loop-mounted reflink XFS)")
        yield None
        return
    tmp = Path(tempfile.mkdtemp(prefix="as-bench-xfs-"))
    img, mnt = tmp / "xfs.img", tmp / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(size_gib << 30)
    dev = None
    try:
        subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(img)], check=True)
        dev = subprocess.run(
            ["losetup", "--find", "--show", str(img)], check=True, capture_output=True, text=True
        ).stdout.strip()
        subprocess.run(["mount", dev, str(mnt)], check=True)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        if dev:
            subprocess.run(["losetup", "-d", dev], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def write_filled(path: Path, size: int, *, every: int | None = None, chunk: int = 1 << 20) -> None:
    """Random data: everywhere (every=None) or one `chunk` every `every` bytes (sparse-filled)."""
    with open(path, "wb") as f:
        if every is None:
            left = size
            while left:
                n = min(left, 8 << 20)
                f.write(os.urandom(n))
                left -= n
        else:
            for off in range(0, size, every):
                f.seek(off)
                f.write(os.urandom(chunk))
            f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


def bench_clone(runs: int, quick: bool) -> None:
    print(f"\n[2] clone_file on a loop-mounted XFS with reflink=1 (median of {runs})")
    with xfs_scratch() as mnt:
        if mnt is None:
            return
        small, big, frag = mnt / "small.img", mnt / "big.img", mnt / "frag.img"
        write_filled(small, 100 * 1000 * 1000)
        # 10 GB sparse image holding 100 MB of data in 4 regions (like a fresh VM disk)...
        write_filled(big, 10 * (1 << 30), every=10 * (1 << 30) // 4, chunk=25 * 1000 * 1000)
        # ...and one whose 160 MiB of data is scattered over 160 extents (reflink cost
        # follows the number of extents, not the size).
        write_filled(frag, 10 * (1 << 30), every=64 << 20)
        results = {}
        cases = (
            ("100 MB", small),
            ("10 GB sparse-filled", big),
            ("10 GB, 160 scattered extents", frag),
        )
        for name, src in cases:
            dsts: list[Path] = []

            def clone(i: int, src: Path = src, dsts: list[Path] = dsts) -> None:
                dst = mnt / f"{src.stem}-c{i}.img"
                assert native.clone_file(src, dst, mode="reflink") == "reflink"
                dsts.append(dst)

            results[name] = median_s(clone, runs)
            for d in dsts:
                d.unlink()
            row(f"native.clone_file reflink, {name}", results[name])
        ratio = results["10 GB sparse-filled"] / results["100 MB"]
        verdict = "met" if ratio <= 1.5 else "NOT met"
        print(f"  => 10 GB / 100 MB = {ratio:.2f}x (goal <= 1.5x: {verdict})")
        cp_runs = 3 if quick else 5
        cp = median_s(
            lambda i: subprocess.run(
                ["cp", "--reflink=never", str(small), str(mnt / f"cp{i}.img")], check=True
            ),
            cp_runs,
        )
        row("cp --reflink=never, 100 MB (full copy)", cp, f"(median of {cp_runs})")
        print(f"  => reflink is {cp / results['100 MB']:.0f}x faster than a full copy of 100 MB")
        copy = median_s(
            lambda i: native.clone_file(small, mnt / f"cc{i}.img", mode="copy"), cp_runs
        )
        row("native.clone_file mode=copy, 100 MB", copy, f"(median of {cp_runs})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer runs")
    args = ap.parse_args()
    runs = 15 if args.quick else 50
    qemu = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True).stdout
    print(
        f"agent-swarm native benchmarks (python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, {qemu.splitlines()[0]})"
    )
    with tempfile.TemporaryDirectory(prefix="as-bench-") as t:
        work = Path(t)
        bench_overlay(work, runs)
        bench_clone(runs, args.quick)
        bench_info(work, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
