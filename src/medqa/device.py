"""Which accelerator torch sees, and which precision to train in on it.

ROCm builds of torch reuse the ``torch.cuda`` API (device string "cuda"); they are told apart by
``torch.version.hip``. ``torch.cuda.is_bf16_supported()`` answers True on every HIP device, so on
ROCm bf16 is decided from the GPU architecture instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# AMD architectures with native bf16 matrix support: MI200 (gfx90a), MI300 (gfx942), MI350 (gfx950),
# RDNA3 (gfx11xx) and RDNA4 (gfx12xx).
ROCM_BF16_ARCHS = ("gfx90a", "gfx942", "gfx950", "gfx11", "gfx12")


@dataclass(frozen=True)
class DeviceInfo:
    """The device training runs on, as logged with every run."""

    backend: str  # rocm | cuda | mps | cpu
    device: str  # the torch device string
    name: str
    arch: str
    bf16: bool


def detect_device(requested: str = "auto") -> DeviceInfo:
    """The best available device, or the requested one."""
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        if torch.version.hip is not None:
            arch = getattr(props, "gcnArchName", "unknown").split(":")[0]
            return DeviceInfo("rocm", "cuda", props.name, arch, arch.startswith(ROCM_BF16_ARCHS))
        arch = f"sm_{props.major}{props.minor}"
        return DeviceInfo("cuda", "cuda", props.name, arch, props.major >= 8)
    if requested in ("auto", "mps") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return DeviceInfo("mps", "mps", "Apple GPU", "mps", False)
    if requested not in ("auto", "cpu"):
        raise RuntimeError(f"train.device is {requested!r} but torch sees no such device")
    import platform

    return DeviceInfo("cpu", "cpu", platform.processor() or platform.machine(), platform.machine(), False)


def choose_precision(requested: str, info: DeviceInfo) -> str:
    """auto: bf16 where natively supported, fp16 (with loss scaling) on other GPUs, fp32 on CPU."""
    if requested != "auto":
        return requested
    if info.backend == "cpu":
        return "fp32"
    return "bf16" if info.bf16 else "fp16"


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory instead of returning it to the OS after every step.

    Activations of a training step are tens of MB each, above glibc's mmap threshold, so by default
    every step maps and unmaps them and pays the page faults again: on a 2-core CPU that was a third
    of the step time (measured: 10.5 s -> 7 s per batch of 32 x 296 tokens). Returns False where
    the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    ok = mallopt(m_mmap_max, 0) == 1  # serve big blocks from the heap, not fresh mappings
    ok &= mallopt(m_trim_threshold, 2**30) == 1  # don't give the heap back below 1 GiB free
    ok &= mallopt(m_top_pad, 2**26) == 1
    return bool(ok)


ROCM_ENV_VARS = ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "HSA_OVERRIDE_GFX_VERSION",
                 "PYTORCH_HIP_ALLOC_CONF", "PYTORCH_TUNABLEOP_ENABLED", "MIOPEN_FIND_MODE", "NCCL_DEBUG")
# Architectures AMD's ROCm PyTorch wheels are built for (data-centre CDNA and recent RDNA cards).
ROCM_SUPPORTED_ARCHS = ("gfx908", "gfx90a", "gfx942", "gfx950", "gfx1030", "gfx1100", "gfx1101", "gfx1200", "gfx1201")


def amd_gpu_present() -> bool:
    """True when the kernel exposes an AMD GPU (the ROCm compute device node exists)."""
    from pathlib import Path

    return Path("/dev/kfd").exists()


def doctor_report() -> tuple[list[str], list[str]]:
    """(facts, warnings) about the torch build, the devices and the ROCm environment."""
    import os

    facts = [f"torch {torch.__version__} (hip {torch.version.hip}, cuda {torch.version.cuda})"]
    warnings: list[str] = []
    info = detect_device()
    facts.append(f"backend: {info.backend}; training device: {info.device}; auto precision: "
                 f"{choose_precision('auto', info)}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            arch = getattr(p, "gcnArchName", f"sm_{p.major}{p.minor}")
            facts.append(f"device {i}: {p.name}; arch {arch}; memory {p.total_memory / 2**30:.1f} GiB")
            base_arch = arch.split(":")[0]
            if torch.version.hip is not None and base_arch not in ROCM_SUPPORTED_ARCHS \
                    and not os.environ.get("HSA_OVERRIDE_GFX_VERSION"):
                warnings.append(f"{base_arch} is not an architecture the ROCm wheels target; consumer cards often "
                                "need HSA_OVERRIDE_GFX_VERSION (e.g. 10.3.0 for RDNA2, 11.0.0 for RDNA3)")
    else:
        facts.append(f"device: {info.name} ({info.arch}); bf16 native: {info.bf16}")
    for var in ROCM_ENV_VARS:
        facts.append(f"{var}={os.environ.get(var, '')}")
    if amd_gpu_present() and torch.version.hip is None:
        warnings.append("an AMD GPU is present (/dev/kfd) but this torch is a "
                        f"{'CUDA' if torch.version.cuda else 'CPU'} build: reinstall torch from the ROCm index "
                        "(pip install torch --index-url https://download.pytorch.org/whl/rocm6.4) or run "
                        "MEDQA_TORCH=rocm scripts/setup.sh in a fresh .venv")
    if torch.version.hip is not None and not torch.cuda.is_available():
        warnings.append("ROCm build of torch but no GPU visible: check that the user is in the 'video' and "
                        "'render' groups and that HIP_VISIBLE_DEVICES is not empty")
    if os.environ.get("HSA_OVERRIDE_GFX_VERSION") and torch.cuda.is_available() and torch.version.hip is not None:
        warnings.append("HSA_OVERRIDE_GFX_VERSION is set: it helps unsupported consumer cards and can break "
                        "supported ones; unset it on MI-series GPUs")
    return facts, warnings
