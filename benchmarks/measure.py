"""Measurement plumbing shared by the sections: medians, percentiles, peak memory, the machine's
description, and running one measurement in a fresh process.

Each training or inference measurement runs in its own freshly spawned process: the peak resident set
(ru_maxrss) only ever grows within a process, and medqa's training tunes glibc's allocator for the
whole process (device.keep_freed_memory), so sharing a process would leak one measurement into the next.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import resource
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def median(values: Sequence[float]) -> float:
    """The median; NaN for no values (a row then shows that nothing was measured)."""
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation between the two nearest samples)."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def peak_memory_mib(device: str) -> tuple[float, str]:
    """This process's peak memory so far and what it is: the allocator peak on a GPU, else peak RSS."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20, "CUDA allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "RSS"  # Linux: KiB


def _send_output_to(log_path: str) -> None:
    """Child initializer: append the child's stdout/stderr (progress bars, load reports) to a log."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run_isolated(log_path: Path, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a fresh spawned process whose output goes to ``log_path``; its result or its error."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=1, mp_context=context, initializer=_send_output_to, initargs=(str(log_path),)
    ) as pool:
        return pool.submit(fn, *args).result()


@dataclass(frozen=True)
class Machine:
    """What the numbers were measured on; the report's header line."""

    cpu: str
    cores: int
    threads: int
    torch_version: str
    transformers_version: str
    device: str
    peak_flops: float | None  # nominal fp32 peak of the cores used, None when unknown (e.g. a GPU)
    peak_basis: str

    def header(self) -> str:
        """One line naming the machine, the software and the thread count."""
        peak = (
            f"; nominal fp32 peak {self.peak_flops / 1e9:.0f} GFLOP/s ({self.peak_basis})"
            if self.peak_flops
            else ""
        )
        return (
            f"{self.cpu}, {self.cores} cores; device {self.device}; torch {self.torch_version} "
            f"({self.threads} threads); transformers {self.transformers_version}{peak}"
        )


def cpu_info(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where the file does not exist)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_peak_flops(flags: set[str], mhz: float, cores: int) -> tuple[float | None, str]:
    """Nominal fp32 peak: cores x clock x FLOPs per cycle of two FMA units at the widest vector width.

    Nominal only: the clock in /proc/cpuinfo is the base clock, and AVX-512 code often runs below it.
    """
    if mhz <= 0:
        return None, "clock unknown"
    if "avx512f" in flags:
        per_cycle, isa = 64, "AVX-512"
    elif {"avx2", "fma"} <= flags:
        per_cycle, isa = 32, "AVX2"
    else:
        per_cycle, isa = 8, "SSE"
    return (
        cores * mhz * 1e6 * per_cycle,
        f"{cores} x {mhz / 1000:.2f} GHz x {per_cycle} FLOP/cycle, {isa} FMA",
    )


def describe_machine() -> Machine:
    """The machine as the report names it: CPU model, cores, torch and its threads, the device."""
    import torch
    import transformers

    from medqa.device import detect_device

    info = cpu_info()
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    device = detect_device("auto")
    if device.backend == "cpu":
        peak, basis = cpu_peak_flops(
            set(info.get("flags", "").split()), float(info.get("cpu MHz", 0) or 0), cores
        )
    else:
        peak, basis = None, ""
    return Machine(
        cpu=info.get("model name") or platform.processor() or platform.machine(),
        cores=cores,
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        transformers_version=transformers.__version__,
        device=f"{device.backend} ({device.name})",
        peak_flops=peak,
        peak_basis=basis,
    )
