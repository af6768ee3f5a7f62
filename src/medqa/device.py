"""Which accelerator torch sees, which precision to train in on it, and what is wrong with the setup.

ROCm builds of torch reuse the ``torch.cuda`` API (device string "cuda"); they are told apart by
``torch.version.hip``. ``torch.cuda.is_bf16_supported()`` answers True on every HIP device, so on
ROCm bf16 is decided from the GPU architecture (``gcnArchName``) instead.

``medqa doctor`` is split in two so it can be tested without a GPU: :func:`gather_facts` is the only
part that asks torch, the file system, the environment and the vendor tools; :func:`describe` and
:func:`diagnose` are pure functions of those facts.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

# AMD architectures with native bf16 matrix instructions: MI200 (gfx90a), MI300 (gfx942), MI350
# (gfx950), RDNA3/3.5 (gfx11xx, WMMA) and RDNA4 (gfx12xx). MI100 (gfx908) has bf16 MFMA at half its
# fp16 rate, so fp16 is the faster choice there.
ROCM_BF16_ARCHS = ("gfx90a", "gfx942", "gfx950", "gfx11", "gfx12")

# Architectures on AMD's official ROCm (7.x) Linux support list, with example products. Others may
# still work when the torch wheel carries kernels for them (see torch.cuda.get_arch_list()).
ROCM_SUPPORTED_ARCHS = {
    "gfx908": "Instinct MI100",
    "gfx90a": "Instinct MI210/MI250/MI250X",
    "gfx942": "Instinct MI300A/MI300X/MI325X",
    "gfx950": "Instinct MI350X/MI355X",
    "gfx1030": "Radeon PRO W6800/V620",
    "gfx1100": "Radeon RX 7900 XTX/XT, Radeon PRO W7900/W7800",
    "gfx1101": "Radeon RX 7800 XT/7700 XT, Radeon PRO W7700",
    "gfx1200": "Radeon RX 9060 XT",
    "gfx1201": "Radeon RX 9070/9070 XT, Radeon AI PRO R9700",
}

# The wheel index for torch 2.13's ROCm build (2.13 is also published for rocm7.1).
ROCM_TORCH_INDEX = "https://download.pytorch.org/whl/rocm7.2"

# Environment variables that change what ROCm (and CUDA) torch does, with what each is for.
ROCM_ENV_VARS = {
    "HIP_VISIBLE_DEVICES": "GPUs HIP exposes (indices into ROCR's list)",
    "ROCR_VISIBLE_DEVICES": "GPUs the ROCm runtime exposes (indices or UUIDs; applied before HIP's)",
    "CUDA_VISIBLE_DEVICES": "GPUs exposed (CUDA; ROCm honours it too)",
    "HSA_OVERRIDE_GFX_VERSION": "run as another GPU architecture (unsupported workaround)",
    "PYTORCH_HIP_ALLOC_CONF": "ROCm caching allocator options",
    "PYTORCH_ALLOC_CONF": "caching allocator (any backend)",
    "PYTORCH_TUNABLEOP_ENABLED": "1: tune GEMM kernels on first use (TunableOp)",
    "TORCH_BLAS_PREFER_HIPBLASLT": "0: use hipBLAS/rocBLAS instead of hipBLASLt",
    "MIOPEN_USER_DB_PATH": "where MIOpen keeps its kernel database (must be writable)",
    "MIOPEN_FIND_MODE": "how hard MIOpen searches for kernels (e.g. FAST)",
    "NCCL_DEBUG": "RCCL/NCCL logging for multi-GPU (INFO, WARN)",
    "NCCL_DEBUG_SUBSYS": "RCCL/NCCL subsystems to log",
    "AMD_LOG_LEVEL": "HIP runtime logging (1-4)",
    "HIP_LAUNCH_BLOCKING": "1: synchronous kernel launches, for debugging",
}

ROCM_TOOLS = ("rocminfo", "rocm-smi", "amd-smi")


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


@dataclass(frozen=True)
class HostFacts:
    """Everything doctor looks at, gathered once so the checks are pure functions of it."""

    torch_version: str
    hip_version: str | None
    cuda_version: str | None
    gpu_available: bool  # torch.cuda.is_available(): true for ROCm and CUDA GPUs alike
    gpus: tuple[GpuFacts, ...] = ()
    compiled_archs: tuple[str, ...] = ()  # the GPU architectures this torch carries kernels for
    mps_available: bool = False
    kfd_exists: bool = False  # /dev/kfd: the AMD GPU compute device node
    kfd_accessible: bool = False
    rocm_tools: tuple[str, ...] = ()  # rocminfo / rocm-smi / amd-smi found
    amd_gpu_count: int | None = None  # GPUs in the kernel's KFD topology; None when unknown
    nvidia_gpu_count: int | None = None  # GPUs nvidia-smi lists; None when there is no nvidia-smi
    env: Mapping[str, str] = field(default_factory=dict)
    cpu_name: str = ""
    machine: str = ""  # platform.machine(), the CPU "architecture" detect_device reports


def rocm_arch_has_bf16(arch: str) -> bool:
    """Whether an AMD architecture (gcnArchName, flags allowed) has native bf16 matrix instructions."""
    return arch.split(":")[0].startswith(ROCM_BF16_ARCHS)


def _gpu_facts(index: int) -> GpuFacts:
    props = torch.cuda.get_device_properties(index)
    if torch.version.hip is not None:
        arch = getattr(props, "gcnArchName", "") or "unknown"
        bf16 = rocm_arch_has_bf16(arch)
    else:
        arch, bf16 = f"sm_{props.major}{props.minor}", props.major >= 8
    return GpuFacts(index, props.name, arch, round(props.total_memory / 2**30, 1), bf16)


def _cpu_name() -> str:
    return platform.processor() or platform.machine()


def cpu_bf16_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """The CPU's native bf16 features (avx512_bf16, amx_bf16) from the kernel's flags, in that order.

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


def detect_device(requested: str = "auto") -> DeviceInfo:
    """The best available device, or the requested one."""
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        g = _gpu_facts(0)
        backend = "rocm" if torch.version.hip is not None else "cuda"
        return DeviceInfo(backend, "cuda", g.name, g.base_arch, g.bf16)
    if (
        requested in ("auto", "mps")
        and getattr(torch.backends, "mps", None)
        and torch.backends.mps.is_available()
    ):
        return DeviceInfo("mps", "mps", "Apple GPU", "mps", False)
    if requested not in ("auto", "cpu"):
        raise RuntimeError(f"train.device is {requested!r} but torch sees no such device")
    return DeviceInfo("cpu", "cpu", _cpu_name(), platform.machine(), False)


def explain_precision(requested: str, info: DeviceInfo) -> tuple[str, str]:
    """(precision, why) for train.precision on this device, so training can log the reason.

    auto: bf16 where the device has native bf16 (fp32's range, so no loss scaling), fp16 with
    dynamic loss scaling on other GPUs, fp32 on CPU (bf16 autocast was measured no faster there).
    """
    if requested != "auto":
        return requested, "set by train.precision"
    if info.backend == "cpu":
        return "fp32", "CPU: bf16 autocast was measured no faster than fp32 on CPU"
    if info.bf16:
        return "bf16", f"{info.arch} has native bf16 (fp32's range: no loss scaling needed)"
    return "fp16", f"{info.arch} has no fast native bf16: fp16 with dynamic loss scaling"


def to_inference_device(model: torch.nn.Module, requested: str = "auto") -> torch.nn.Module:
    """``model`` on the detected (or requested) device, in eval mode: a ROCm or CUDA GPU when there is one."""
    return model.to(torch.device(detect_device(requested).device)).eval()


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


# --- doctor: gathering facts (the only impure part) -------------------------------------------------


def _kfd_gpu_count(topology: Path = Path("/sys/class/kfd/kfd/topology/nodes")) -> int | None:
    """GPUs the amdgpu driver exposes to ROCm (KFD nodes with SIMDs; CPU nodes have none)."""
    if not topology.is_dir():
        return None
    count = 0
    for props in topology.glob("*/properties"):
        try:
            text = props.read_text()
        except OSError:
            continue
        m = re.search(r"^simd_count\s+(\d+)", text, re.MULTILINE)
        count += bool(m and int(m.group(1)) > 0)
    return count


def _nvidia_gpu_count() -> int | None:
    """GPUs ``nvidia-smi -L`` lists (0 when it fails, e.g. no driver); None without nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def gather_facts() -> HostFacts:
    """Ask torch, /dev, /sys, PATH and the environment what this machine has."""
    available = torch.cuda.is_available()
    kfd = Path("/dev/kfd")
    tools = tuple(t for t in ROCM_TOOLS if shutil.which(t) or Path("/opt/rocm/bin", t).exists())
    mps = getattr(torch.backends, "mps", None)
    return HostFacts(
        torch_version=torch.__version__,
        hip_version=torch.version.hip,
        cuda_version=torch.version.cuda,
        gpu_available=available,
        gpus=tuple(_gpu_facts(i) for i in range(torch.cuda.device_count())) if available else (),
        compiled_archs=tuple(torch.cuda.get_arch_list()),
        mps_available=bool(mps and mps.is_available()),
        kfd_exists=kfd.exists(),
        kfd_accessible=os.access(kfd, os.R_OK | os.W_OK),
        rocm_tools=tools,
        amd_gpu_count=_kfd_gpu_count(),
        nvidia_gpu_count=_nvidia_gpu_count(),
        env={k: os.environ[k] for k in ROCM_ENV_VARS if k in os.environ},
        cpu_name=_cpu_name(),
        machine=platform.machine(),
    )


# --- doctor: pure functions of the facts -------------------------------------------------------------


def backend_of(f: HostFacts) -> str:
    """rocm | cuda | mps | cpu: where train.device auto puts training."""
    if f.gpu_available:
        return "rocm" if f.hip_version else "cuda"
    return "mps" if f.mps_available else "cpu"


def device_info_of(f: HostFacts) -> DeviceInfo:
    """What detect_device('auto') returns on a machine with these facts."""
    backend = backend_of(f)
    if backend in ("rocm", "cuda") and f.gpus:
        g = f.gpus[0]
        return DeviceInfo(backend, "cuda", g.name, g.base_arch, g.bf16)
    if backend == "mps":
        return DeviceInfo("mps", "mps", "Apple GPU", "mps", False)
    return DeviceInfo("cpu", "cpu", f.cpu_name, f.machine, False)


def amd_support(f: HostFacts, arch: str) -> str:
    """official | unofficial (torch has kernels, AMD does not list it) | none (no kernels in this torch)."""
    base = arch.split(":")[0]
    compiled = {a.split(":")[0] for a in f.compiled_archs}
    has_kernels = base in compiled if compiled else base in ROCM_SUPPORTED_ARCHS
    if not has_kernels:
        return "none"
    return "official" if base in ROCM_SUPPORTED_ARCHS else "unofficial"


def hsa_override_for(arch: str) -> str | None:
    """The HSA_OVERRIDE_GFX_VERSION commonly used for an unsupported consumer architecture.

    RDNA2 cards (gfx1031, gfx1032, ...) borrow gfx1030's kernels (10.3.0), RDNA3/3.5 ones
    gfx1100's (11.0.0). Nothing similar is known to work for other families.
    """
    base = arch.split(":")[0]
    if base.startswith("gfx103"):
        return "10.3.0"
    if base.startswith("gfx11"):
        return "11.0.0"
    return None


def describe(f: HostFacts) -> list[str]:
    """The facts doctor prints: build, backend and precision, devices, probes, environment."""
    info = device_info_of(f)
    precision, why = explain_precision("auto", info)
    lines = [
        f"torch {f.torch_version} (HIP {f.hip_version or 'none'}, CUDA {f.cuda_version or 'none'})",
        f"backend: {backend_of(f)}; training device: {info.device}; auto precision: {precision} ({why})",
    ]
    if f.compiled_archs:
        lines.append(f"torch has kernels for: {' '.join(f.compiled_archs)}")
    for g in f.gpus:
        line = (
            f"device {g.index}: {g.name}; arch {g.arch}; memory {g.memory_gib:.1f} GiB; "
            f"bf16: {'yes' if g.bf16 else 'no'}"
        )
        if f.hip_version:
            line += f"; AMD support: {amd_support(f, g.arch)}"
        lines.append(line)
    if not f.gpus:
        bf16 = "not used on CPU" if info.backend == "cpu" else ("yes" if info.bf16 else "no")
        lines.append(f"device: {info.name} ({info.arch}); bf16: {bf16}")
    kfd = (
        ("present, accessible" if f.kfd_accessible else "present, NOT accessible")
        if f.kfd_exists
        else "absent"
    )
    amd_count = "unknown" if f.amd_gpu_count is None else str(f.amd_gpu_count)
    lines.append(
        f"AMD: /dev/kfd {kfd}; GPUs in KFD topology: {amd_count}; "
        f"ROCm tools: {', '.join(f.rocm_tools) or 'none'}"
    )
    nvidia = (
        "no nvidia-smi"
        if f.nvidia_gpu_count is None
        else f"nvidia-smi lists {f.nvidia_gpu_count} GPU(s)"
    )
    lines.append(f"NVIDIA: {nvidia}")
    lines.append("environment:")
    for var, meaning in ROCM_ENV_VARS.items():
        state = f"{var}={f.env[var]}" if var in f.env else f"{var}: unset"
        lines.append(f"  {state:<36} {meaning}")
    return lines


def _visible_device_warnings(f: HostFacts) -> list[str]:
    """*_VISIBLE_DEVICES set to nothing, or to an index past the GPUs that exist."""
    amd_side = f.hip_version is not None or (f.kfd_exists and not f.nvidia_gpu_count)
    physical = f.amd_gpu_count if amd_side else f.nvidia_gpu_count
    if amd_side:
        # ROCR_VISIBLE_DEVICES filters first; HIP's and CUDA's indices count the GPUs it left
        order = ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")
        rocr = f.env.get("ROCR_VISIBLE_DEVICES")
        after_rocr = len(rocr.split(",")) if rocr else physical
    else:
        order, after_rocr = ("CUDA_VISIBLE_DEVICES",), physical
    warnings = []
    for var in order:
        if var not in f.env:
            continue
        value = f.env[var].strip()
        if not value:
            if physical:
                warnings.append(
                    f"{var} is set but empty, which hides every GPU: unset it "
                    f"(or list the GPUs to use, e.g. {var}=0)"
                )
            continue
        limit = physical if var == "ROCR_VISIBLE_DEVICES" else after_rocr
        if limit is None:
            continue
        bad = [p for p in value.split(",") if p.strip().isdigit() and int(p) >= limit]
        if bad:
            valid = f"0-{limit - 1}" if limit > 1 else ("0" if limit == 1 else "none")
            warnings.append(
                f"{var}={value} names GPU {', '.join(bad)} but only {limit} exist(s) (valid: {valid}); "
                f"torch sees fewer or no GPUs: fix or unset {var}"
            )
    return warnings


def diagnose(f: HostFacts) -> list[str]:
    """Warnings, each with its fix, for the usual ways a GPU setup goes wrong."""
    warnings: list[str] = []
    amd_present = f.kfd_exists or bool(f.rocm_tools)
    reinstall = ".venv/bin/pip uninstall -y torch && .venv/bin/pip install torch --index-url"
    if amd_present and f.hip_version is None and not f.gpu_available:
        build = "CUDA" if f.cuda_version else "CPU"
        seen = "/dev/kfd exists" if f.kfd_exists else f"{'/'.join(f.rocm_tools)} found"
        warnings.append(
            f"this machine has an AMD GPU ({seen}) but torch is a {build} build: install the ROCm "
            f"build: {reinstall} {ROCM_TORCH_INDEX} (or delete .venv and run "
            "MEDQA_TORCH=rocm make pipeline)"
        )
    if f.nvidia_gpu_count and f.hip_version is None and f.cuda_version is None:
        warnings.append(
            "nvidia-smi lists an NVIDIA GPU but torch is a CPU build: install the CUDA build: "
            ".venv/bin/pip uninstall -y torch && .venv/bin/pip install torch (Linux wheels on "
            "PyPI are CUDA builds), or delete .venv and run MEDQA_TORCH=cuda make pipeline"
        )
    if f.cuda_version and f.nvidia_gpu_count is not None and not f.gpu_available:
        warnings.append(
            "CUDA build of torch but no GPU visible: check the driver (nvidia-smi) and "
            "CUDA_VISIBLE_DEVICES"
        )
    if f.kfd_exists and not f.kfd_accessible:
        warnings.append(
            "/dev/kfd exists but this user cannot open it: add the user to the render and video "
            "groups (sudo usermod -aG render,video $USER, then log in again); in Docker pass "
            "--device=/dev/kfd --device=/dev/dri --group-add video"
        )
    if f.hip_version and not f.gpu_available:
        if not f.kfd_exists:
            warnings.append(
                "ROCm build of torch but no /dev/kfd: the amdgpu driver is not loaded, or this is "
                "a container started without --device=/dev/kfd --device=/dev/dri"
            )
        elif f.kfd_accessible:
            warnings.append(
                "ROCm build of torch but no GPU visible: check HIP_VISIBLE_DEVICES / "
                "ROCR_VISIBLE_DEVICES, and that the ROCm driver is recent enough for "
                f"torch's HIP {f.hip_version}"
            )
    warnings += _visible_device_warnings(f)

    override = f.env.get("HSA_OVERRIDE_GFX_VERSION")
    if override is not None and not re.fullmatch(r"\d+\.\d+\.\d+", override.strip()):
        warnings.append(
            f"HSA_OVERRIDE_GFX_VERSION={override} is not of the form major.minor.stepping: "
            "write e.g. 10.3.0 for gfx1030 or 11.0.0 for gfx1100"
        )
    for g in f.gpus if f.hip_version else ():
        if override and "instinct" in g.name.lower():
            warnings.append(
                f"HSA_OVERRIDE_GFX_VERSION={override} is set on {g.name}, a supported GPU: unset it "
                "(it makes ROCm load kernels built for another architecture)"
            )
        if amd_support(f, g.arch) != "none":
            continue
        msg = (
            f"device {g.index} ({g.name}) is {g.base_arch}, which this torch has no kernels for: GPU work fails "
            "(hipErrorNoBinaryForGpu, 'invalid device function')"
        )
        suggestion = hsa_override_for(g.arch)
        if override:
            msg += f"; HSA_OVERRIDE_GFX_VERSION={override} does not map it to an architecture torch was built for"
        elif suggestion:
            msg += (
                f". Unsupported workaround: export HSA_OVERRIDE_GFX_VERSION={suggestion} to run it as "
                f"{'gfx1030 (RDNA2)' if suggestion == '10.3.0' else 'gfx1100 (RDNA3)'}; AMD does not "
                "support this and results are not guaranteed"
            )
        else:
            msg += "; use a GPU on AMD's supported list (medqa README) or train on CPU"
        warnings.append(msg)
    return warnings


def doctor_report() -> tuple[list[str], list[str]]:
    """(facts, warnings) about the torch build, the devices and the ROCm environment."""
    facts = gather_facts()
    return describe(facts), diagnose(facts)
