"""``medqa doctor``: what torch build, devices and GPU environment this machine has, and what is
wrong with them, each warning with its fix.

Split in two so it can be tested without a GPU: :func:`gather_facts` is the only part that asks
torch, the file system, the environment and the vendor tools; :func:`describe` and
:func:`diagnose` are pure functions of those facts. Device and precision selection themselves live
in :mod:`medqa.device`; doctor reports what they would choose on a machine with these facts.
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

from medqa.device import (
    DeviceInfo,
    GpuFacts,
    cpu_bf16_features,
    cpu_name,
    explain_precision,
    gpu_facts,
)
from medqa.envlock import lock_report

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
    "ROCR_VISIBLE_DEVICES": "GPUs the ROCm runtime exposes (indices or UUIDs; before HIP's)",
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
    cpu_bf16: tuple[str, ...] = ()  # the CPU's native bf16 features (cpu_bf16_features)


# --- gathering facts (the only impure part) -------------------------------------------------------


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
        gpus=tuple(gpu_facts(i) for i in range(torch.cuda.device_count())) if available else (),
        compiled_archs=tuple(torch.cuda.get_arch_list()),
        mps_available=bool(mps and mps.is_available()),
        kfd_exists=kfd.exists(),
        kfd_accessible=os.access(kfd, os.R_OK | os.W_OK),
        rocm_tools=tools,
        amd_gpu_count=_kfd_gpu_count(),
        nvidia_gpu_count=_nvidia_gpu_count(),
        env={k: os.environ[k] for k in ROCM_ENV_VARS if k in os.environ},
        cpu_name=cpu_name(),
        machine=platform.machine(),
        cpu_bf16=cpu_bf16_features(),
    )


# --- pure functions of the facts ------------------------------------------------------------------


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
    return DeviceInfo("cpu", "cpu", f.cpu_name, f.machine, bool(f.cpu_bf16))


def amd_support(f: HostFacts, arch: str) -> str:
    """official | unofficial (torch has kernels, AMD does not list it) | none (torch has none)."""
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


def _cpu_bf16_words(f: HostFacts) -> str:
    """The CPU's bf16 support as doctor prints it, with the flags that decide it."""
    if f.cpu_bf16:
        return f"native ({', '.join(f.cpu_bf16)}): training auto uses bf16 autocast"
    return "not native (no avx512_bf16/amx_bf16): training auto uses fp32"


def describe(f: HostFacts) -> list[str]:
    """The facts doctor prints: build, backend and precision, devices, probes, environment."""
    info = device_info_of(f)
    precision, why = explain_precision("auto", info, cpu_features=f.cpu_bf16)
    lines = [
        f"torch {f.torch_version} (HIP {f.hip_version or 'none'}, CUDA {f.cuda_version or 'none'})",
        f"backend: {backend_of(f)}; training device: {info.device}; "
        f"auto precision: {precision} ({why})",
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
        bf16 = ("yes" if info.bf16 else "no") if info.backend != "cpu" else _cpu_bf16_words(f)
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
        order: tuple[str, ...] = (
            "ROCR_VISIBLE_DEVICES",
            "HIP_VISIBLE_DEVICES",
            "CUDA_VISIBLE_DEVICES",
        )
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
                f"{var}={value} names GPU {', '.join(bad)} but only {limit} exist(s) "
                f"(valid: {valid}); torch sees fewer or no GPUs: fix or unset {var}"
            )
    return warnings


def _build_warnings(f: HostFacts) -> list[str]:
    """A torch build that does not match the machine's GPU, or a GPU torch cannot open."""
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
    return warnings


def _arch_warnings(f: HostFacts) -> list[str]:
    """HSA_OVERRIDE_GFX_VERSION misuse, and AMD GPUs this torch has no kernels for."""
    warnings: list[str] = []

    override = f.env.get("HSA_OVERRIDE_GFX_VERSION")
    if override is not None and not re.fullmatch(r"\d+\.\d+\.\d+", override.strip()):
        warnings.append(
            f"HSA_OVERRIDE_GFX_VERSION={override} is not of the form major.minor.stepping: "
            "write e.g. 10.3.0 for gfx1030 or 11.0.0 for gfx1100"
        )
    for g in f.gpus if f.hip_version else ():
        if override and "instinct" in g.name.lower():
            warnings.append(
                f"HSA_OVERRIDE_GFX_VERSION={override} is set on {g.name}, a supported GPU: "
                "unset it (it makes ROCm load kernels built for another architecture)"
            )
        if amd_support(f, g.arch) != "none":
            continue
        msg = (
            f"device {g.index} ({g.name}) is {g.base_arch}, which this torch has no kernels for: "
            "GPU work fails (hipErrorNoBinaryForGpu, 'invalid device function')"
        )
        suggestion = hsa_override_for(g.arch)
        if override:
            msg += (
                f"; HSA_OVERRIDE_GFX_VERSION={override} does not map it to an architecture torch "
                "was built for"
            )
        elif suggestion:
            borrowed = "gfx1030 (RDNA2)" if suggestion == "10.3.0" else "gfx1100 (RDNA3)"
            msg += (
                f". Unsupported workaround: export HSA_OVERRIDE_GFX_VERSION={suggestion} to run it "
                f"as {borrowed}; AMD does not support this and results are not guaranteed"
            )
        else:
            msg += "; use a GPU on AMD's supported list (medqa README) or train on CPU"
        warnings.append(msg)
    return warnings


def diagnose(f: HostFacts) -> list[str]:
    """Warnings, each with its fix, for the usual ways a GPU setup goes wrong."""
    return _build_warnings(f) + _visible_device_warnings(f) + _arch_warnings(f)


def doctor_report() -> tuple[list[str], list[str]]:
    """(facts, warnings) about the torch build, the devices, the ROCm environment and the installed
    packages against the project's lock."""
    facts = gather_facts()
    lock_facts, lock_warnings = lock_report()
    return describe(facts) + lock_facts, diagnose(facts) + lock_warnings
