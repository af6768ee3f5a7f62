"""Which device torch trains and predicts on, and which precision training uses there.

ROCm builds of torch reuse the ``torch.cuda`` API (device string "cuda"); they are told apart by
``torch.version.hip``. ``torch.cuda.is_bf16_supported()`` answers True on every HIP device, so on
ROCm bf16 is decided from the GPU architecture (``gcnArchName``) instead. On a CPU it is decided
from the kernel's CPU flags (:func:`cpu_bf16_features`). ``medqa doctor`` is :mod:`medqa.doctor`.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import PreTrainedModel

from medqa.contracts import PRECISION_CHOICES
from medqa.errors import ConfigError

ModelT = TypeVar("ModelT", bound=torch.nn.Module)

# AMD architectures with native bf16 matrix instructions: MI200 (gfx90a), MI300 (gfx942), MI350
# (gfx950), RDNA3/3.5 (gfx11xx, WMMA) and RDNA4 (gfx12xx). MI100 (gfx908) has bf16 MFMA at half its
# fp16 rate, so fp16 is the faster choice there.
ROCM_BF16_ARCHS = ("gfx90a", "gfx942", "gfx950", "gfx11", "gfx12")


@dataclass(frozen=True)
class DeviceInfo:
    """The device training runs on, as logged with every run."""

    backend: str  # rocm | cuda | mps | cpu
    device: str  # the torch device string
    name: str
    arch: str
    bf16: bool


@dataclass(frozen=True)
class GpuFacts:
    """One GPU as torch reports it."""

    index: int
    name: str
    arch: (
        str  # gcnArchName on AMD (with feature flags, e.g. gfx90a:sramecc+:xnack-), sm_XY on NVIDIA
    )
    memory_gib: float
    bf16: bool

    @property
    def base_arch(self) -> str:
        """The architecture without its feature flags: gfx90a:sramecc+:xnack- -> gfx90a."""
        return self.arch.split(":")[0]


def rocm_arch_has_bf16(arch: str) -> bool:
    """Whether an AMD architecture (gcnArchName, flags allowed) has native bf16 matrix units."""
    return arch.split(":")[0].startswith(ROCM_BF16_ARCHS)


def gpu_facts(index: int) -> GpuFacts:
    """GPU ``index`` as torch reports it (used by detect_device and by medqa doctor)."""
    props = torch.cuda.get_device_properties(index)
    if torch.version.hip is not None:
        arch = getattr(props, "gcnArchName", "") or "unknown"
        bf16 = rocm_arch_has_bf16(arch)
    else:
        arch, bf16 = f"sm_{props.major}{props.minor}", props.major >= 8
    return GpuFacts(index, props.name, arch, round(props.total_memory / 2**30, 1), bf16)


def cpu_name() -> str:
    """The CPU's name as the platform reports it (often empty on Linux: then the machine type)."""
    return platform.processor() or platform.machine()


def cpu_bf16_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """The CPU's native bf16 features (avx512_bf16, amx_bf16) from the kernel's flags, in order.

    bf16 autocast is fast on a CPU only when its matrix units take bf16 directly; elsewhere oneDNN
    emulates it and it runs slower than fp32. Empty where the flags cannot be read (not Linux).
    """
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return tuple(f for f in ("avx512_bf16", "amx_bf16") if f in flags)


def detect_device(requested: str = "auto", setting: str = "train.device") -> DeviceInfo:
    """The best available device, or the requested one; a device torch cannot see is a ConfigError
    naming ``setting`` (the key or option that asked for it), not a traceback from deep in torch."""
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        g = gpu_facts(0)
        backend = "rocm" if torch.version.hip is not None else "cuda"
        return DeviceInfo(backend, "cuda", g.name, g.base_arch, g.bf16)
    if (
        requested in ("auto", "mps")
        and getattr(torch.backends, "mps", None)
        and torch.backends.mps.is_available()
    ):
        return DeviceInfo("mps", "mps", "Apple GPU", "mps", False)
    if requested not in ("auto", "cpu"):
        raise ConfigError(
            f"{setting} is {requested!r} but torch {torch.__version__} sees no such device "
            f"({_missing_device_hint(requested)}): use auto or cpu, or see medqa doctor"
        )
    return DeviceInfo("cpu", "cpu", cpu_name(), platform.machine(), bool(cpu_bf16_features()))


def _missing_device_hint(requested: str) -> str:
    """Why torch sees no ``requested`` device: a build without its backend, or no device visible."""
    if requested != "cuda":
        return f"no {requested} backend available"
    if torch.version.cuda is None and torch.version.hip is None:
        return "this is a CPU-only build of torch"
    return "no GPU visible to this build: check the driver and *_VISIBLE_DEVICES"


def choose_precision(
    requested: str,
    device_type: str,
    gpu_bf16: bool,
    cpu_features: Sequence[str],
    setting: str = "precision",
) -> tuple[str, str]:
    """(precision, why) of ``requested`` on a device of this kind: the one policy that training
    (train.precision) and inference (evaluate.precision, --precision) both ask.

    auto: bf16 where the hardware multiplies bf16 natively, which keeps fp32's range (no loss
    scaling): a CPU with avx512_bf16 or AMX (a plain training step ran ~1.9x faster on an idle 2-core
    EPYC, issue 20; the shipped checkpoint scored test F1 0.4609 against fp32's 0.4593 at 1.5-1.8x
    the windows/s), a GPU with bf16. fp16 (with dynamic loss scaling when training) on other GPUs.
    fp32 on other CPUs, where oneDNN would emulate bf16 and be slower. fp16 is refused on a CPU:
    bf16 is its half precision. ``setting`` names the key or option in the messages.
    """
    if requested not in PRECISION_CHOICES:
        raise ConfigError(f"{setting} {requested!r} is not one of {', '.join(PRECISION_CHOICES)}")
    if requested == "fp16" and device_type == "cpu":
        raise ConfigError(f"{setting} fp16 needs a GPU; on a CPU use bf16 or fp32")
    if requested != "auto":
        return requested, f"set by {setting}"
    if device_type == "cpu":
        if cpu_features:
            return "bf16", f"CPU with native bf16 ({', '.join(cpu_features)}): bf16 autocast"
        return "fp32", "CPU without native bf16 (no avx512_bf16/amx_bf16): bf16 would be emulated"
    if gpu_bf16:
        return "bf16", f"{device_type} device with native bf16: bf16 autocast"
    return "fp16", f"{device_type} device without native bf16: fp16 autocast"


def explain_precision(
    requested: str, info: DeviceInfo, cpu_features: Sequence[str] | None = None
) -> tuple[str, str]:
    """``choose_precision`` for train.precision on the training device; ``cpu_features`` are read
    from this machine when not given (doctor passes another machine's)."""
    features = cpu_bf16_features() if cpu_features is None else tuple(cpu_features)
    cpu = info.backend == "cpu"
    return choose_precision(
        requested, info.device, info.bf16, features if cpu else (), "train.precision"
    )


def resolve_precision(requested: str, device: torch.device, setting: str) -> tuple[str, str]:
    """``choose_precision`` with this machine's facts for ``device`` (inference)."""
    gpu_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    features = cpu_bf16_features() if device.type == "cpu" else ()
    return choose_precision(requested, device.type, gpu_bf16, features, setting)


def to_inference_device(model: ModelT, requested: str = "auto") -> ModelT:
    """``model`` on the detected (or requested) device, in eval mode: a GPU when there is one."""
    model.to(torch.device(detect_device(requested, setting="device").device)).eval()
    return model  # Module.to and .eval move and switch it in place


def _libc() -> Any | None:
    """glibc, for its allocator settings; None where the C library is another."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory instead of returning it to the OS after every step.

    Activations of a training step are tens of MB each, above glibc's mmap threshold, so by default
    every step maps and unmaps them and pays the page faults again: on a 2-core CPU that was a third
    of the step time (measured: 10.5 s -> 7 s per batch of 32 x 296 tokens). Returns False where
    the C library is not glibc.
    """
    libc = _libc()
    if libc is None:
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    ok = libc.mallopt(m_mmap_max, 0) == 1  # serve big blocks from the heap, not fresh mappings
    ok &= libc.mallopt(m_trim_threshold, 2**30) == 1  # don't give the heap back below 1 GiB free
    ok &= libc.mallopt(m_top_pad, 2**26) == 1
    return bool(ok)


def release_freed_memory() -> None:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim``), between chunks of a
    scoring pass.

    Under ``keep_freed_memory`` the heap only grows: each chunk's activations leave holes that the
    next chunk's small objects split, so a pass over a 100k-question set's dev and test grew the
    evaluate stage to 1.76 GB. Trimmed once a chunk (every ~64 batches, so the page faults it
    brings back cost nothing measurable) the peak was 1.42 GB, at the same speed (issue 28).
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def precision_context(
    model: PreTrainedModel, precision: str
) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``precision`` on the model's device (nothing for fp32).

    Autocast, not weights cast to bf16: matrix products run in bf16 while softmax, layer norm and the
    logits stay fp32, which keeps the answers of the fp32 model (see docs/benchmarks.md).
    """
    cast = getattr(model, CAST_MARK, None)
    if cast is not None and cast != precision:
        raise ValueError(
            f"the model's weights were cast for {cast} autocast; reload it for {precision}"
        )
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(model.device.type, dtype=_AUTOCAST_DTYPES[precision])


# Set on a model whose matrix weights cast_for_autocast converted: the precision they are cast for.
CAST_MARK = "_medqa_cast_for"


def cast_for_autocast(model: ModelT, precision: str) -> ModelT:
    """Convert the weights and biases of the model's linear layers, once, to the dtype autocast at
    ``precision`` would convert them to on every pass; for inference only (training keeps fp32
    master weights for the optimizer). Nothing for fp32.

    Autocast casts each weight again in every forward pass (aten::copy_, 6% of a bf16 pass of the
    default model on a CPU). Cast once, the results are bit-identical to autocast's (a test
    compares the logits) and a pass is ~7% faster. Layer norms and embeddings stay fp32, as autocast
    keeps them. The model is marked, so running it at another precision is refused, not silent.
    """
    if precision == "fp32":
        return model
    dtype = _AUTOCAST_DTYPES[precision]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.data = module.weight.data.to(dtype)
                if module.bias is not None:
                    module.bias.data = module.bias.data.to(dtype)
    setattr(model, CAST_MARK, precision)
    return model
