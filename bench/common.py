"""Helpers shared by the bench scripts (DESIGN.md "Benchmarks").

* :func:`figure` prints the machine-readable result line ``FIGURE <name> <value> [<unit>]``;
* :func:`timed` times a call (synchronising CUDA when it is in use);
* :func:`interleaved_cpu_times` times several cases in interleaved rounds by one thread's CPU time and
  prints the rounds;
* :func:`measure_peak` runs a function and reports its peak memory: on the CPU the peak RSS of a
  fresh child process (``VmHWM``), so every measurement starts from the same clean process; on CUDA
  ``torch.cuda.max_memory_allocated`` in this process;
* :func:`max_abs_error`, :func:`psnr_db` compare an output with its reference.

Bench scripts are run from the repository root (``python bench/<name>.py``); functions passed to
:func:`measure_peak` must be importable module-level functions.
"""
from __future__ import annotations

import math
import multiprocessing
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def figure(name: str, value: float, unit: str | None = None) -> None:
    """Print one ``FIGURE`` line (values with 4 significant digits; ``inf`` stays ``inf``)."""
    text = f"{value:.4g}" if math.isfinite(value) else str(value)
    print(f"FIGURE {name} {text}" + (f" {unit}" if unit else ""), flush=True)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall-clock seconds (CUDA work included)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


@dataclass(frozen=True)
class Rounds:
    """What `interleaved_cpu_times` measured: each case's warm-up result and its times per round."""

    results: dict[str, Any]
    times: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])


def interleaved_cpu_times(cases: Mapping[str, Callable[[], Any]], rounds: int) -> Rounds:
    """Run every case once (warm-up: first calls allocate and pick kernels; its result is kept), then
    `rounds` rounds that run every case in turn, timed by this thread's CPU time (`time.thread_time`,
    so other jobs on the machine move it little); prints each case's times, no gradients."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    with torch.no_grad():
        results = {name: fn() for name, fn in cases.items()}
        for _ in range(rounds):
            for name, fn in cases.items():
                start = time.thread_time()
                fn()
                times[name].append(time.thread_time() - start)
    width = max(len(name) for name in cases)
    for name, values in times.items():
        print(f"{name:{width}s} " + " ".join(f"{v:.3f}" for v in values) + " s CPU")
    return Rounds(results, times)


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux ``VmHWM``; else ``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


@dataclass(frozen=True)
class Measurement:
    """A function's return value and the peak memory (bytes) of running it."""

    value: Any
    peak_bytes: int


def _child(conn: Any, fn: Callable[..., Any], args: tuple) -> None:
    try:
        value = fn(*args)
        conn.send(("ok", value, peak_rss_bytes()))
    except BaseException:  # report everything to the parent, which re-raises
        conn.send(("error", traceback.format_exc(), 0))
    conn.recv()  # keep the process (and any shared tensor storage) alive until the parent has read


def _in_child(fn: Callable[..., Any], args: tuple) -> Measurement:
    """Run ``fn(*args)`` in a fresh process started from a server that has imported torch already."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(["torch"])
    parent, child = context.Pipe()
    process = context.Process(target=_child, args=(child, fn, args))
    process.start()
    child.close()  # the child's end lives in the child only, so its death reads as EOF here
    try:
        status, value, peak = parent.recv()
        parent.send("done")
    except EOFError as error:
        process.join()
        raise RuntimeError(f"benchmark child died (exit code {process.exitcode}; out of memory?)") from error
    finally:
        process.join()
    if status == "error":
        raise RuntimeError(f"benchmark child failed:\n{value}")
    return Measurement(value, peak)


def measure_peak(fn: Callable[..., Any], *args: Any, device: str = "cpu") -> Measurement:
    """``fn(*args)`` and its peak memory: child-process peak RSS on the CPU, CUDA peak allocation on
    ``cuda`` (in this process, after a warm-up call that is not measured)."""
    if device == "cpu":
        return _in_child(fn, args)
    fn(*args)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    value = fn(*args)
    return Measurement(value, torch.cuda.max_memory_allocated())


def max_abs_error(out: Tensor, ref: Tensor) -> float:
    return (out.double() - ref.double()).abs().max().item()


def psnr_db(out: Tensor, ref: Tensor) -> float:
    """PSNR with the reference's value range as the peak (the outputs of random-weight models are
    not confined to [-1, 1]); ``inf`` for identical tensors."""
    mse = (out.double() - ref.double()).square().mean().item()
    peak = (ref.max() - ref.min()).item()
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)
