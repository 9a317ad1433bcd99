"""What every benchmark needs: a contender in a fresh child process, its time and peak memory.

A child process measures itself: VmHWM is per address space, so exec resets it and the parent's
memory (the generated inputs) never counts against a contender.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from starsmith.orchestration.budget import peak_bytes


def peak_rss_mib() -> float:
    """This process's own high-water RSS in MiB (the reading the memory budget uses)."""
    return peak_bytes() / 2**20 or float("nan")


def report(folder: Path, kind: str, seconds: float) -> None:
    """Called by the child at its end: leave (time, peak RSS) for the parent."""
    (folder / f"{kind}.measure").write_text(f"{seconds} {peak_rss_mib()}")


def measure(script: str, kind: str, folder: Path, *extra: str) -> tuple[float, float]:
    """Run ``script --child kind folder ...`` and return the (seconds, MiB) it reported."""
    subprocess.run([sys.executable, script, "--child", kind, str(folder), *extra], check=True)
    seconds, rss = (folder / f"{kind}.measure").read_text().split()
    return float(seconds), float(rss)
