"""Shared helpers for the benchmarks: wall time (median of repeats) and peak memory of a call."""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from pathlib import Path

import scipy.fft as sfft


def _rss_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _child(fn, args, kwargs, q):
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    base = _rss_kb("VmRSS")
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    dt = time.perf_counter() - t0
    q.put((dt, (_rss_kb("VmHWM") - base) / 1024.0))


def measure(fn, *args, repeat: int = 3, **kwargs) -> dict:
    """Run ``fn(*args, **kwargs)`` ``repeat`` times, each in a forked process.

    Returns ``{"median_s", "min_s", "peak_mb"}``: median wall time (s) and the largest increase
    of resident memory over the process' start (MiB, VmHWM − VmRSS), i.e. what the call itself
    needed beyond its inputs.
    """
    ctx = mp.get_context("fork")
    times, peaks = [], []
    for _ in range(repeat):
        q = ctx.Queue()
        p = ctx.Process(target=_child, args=(fn, args, kwargs, q))
        p.start()
        dt, peak = q.get()
        p.join()
        times.append(dt)
        peaks.append(peak)
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_mb": max(peaks)}


def fft_pair_seconds(shape, workers: int = 2, repeat: int = 5) -> float:
    """Median time (s) of one forward + inverse complex FFT of ``shape`` (the physical floor)."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal(shape)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sfft.ifftn(sfft.fftn(x, workers=workers), workers=workers)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def md_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; floats printed with 3 significant digits."""
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out) + "\n"
