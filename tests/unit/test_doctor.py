"""medqa doctor: its facts and warnings, and what it says device selection would choose, fed fake
machine facts (no GPU needed)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from medqa.device import explain_precision, rocm_arch_has_bf16
from medqa.doctor import (
    ROCM_TORCH_INDEX,
    GpuFacts,
    HostFacts,
    describe,
    device_info_of,
    diagnose,
    gather_facts,
    hsa_override_for,
)

WHEEL_ARCHS = (
    "gfx900",
    "gfx906",
    "gfx908",
    "gfx90a",
    "gfx942",
    "gfx950",
    "gfx1030",
    "gfx1100",
    "gfx1101",
    "gfx1102",
    "gfx1200",
    "gfx1201",
)

CPU_BOX = HostFacts(
    torch_version="2.13.0+cpu",
    hip_version=None,
    cuda_version=None,
    gpu_available=False,
    cpu_name="x86_64",
    machine="x86_64",
)


def rocm_box(
    name: str = "AMD Instinct MI300X",
    arch: str = "gfx942:sramecc+:xnack-",
    n: int = 1,
    **changes: object,
) -> HostFacts:
    """A ROCm torch on a machine with ``n`` AMD GPUs of one kind, all visible and accessible."""
    gpus = tuple(GpuFacts(i, name, arch, 191.5, rocm_arch_has_bf16(arch)) for i in range(n))
    facts = HostFacts(
        torch_version="2.13.0+rocm7.2",
        hip_version="7.2.26015",
        cuda_version=None,
        gpu_available=True,
        gpus=gpus,
        compiled_archs=WHEEL_ARCHS,
        kfd_exists=True,
        kfd_accessible=True,
        rocm_tools=("rocminfo", "amd-smi"),
        amd_gpu_count=n,
    )
    return replace(facts, **changes)


NVIDIA_BOX = HostFacts(
    torch_version="2.13.0+cu130",
    hip_version=None,
    cuda_version="13.0",
    gpu_available=True,
    gpus=(GpuFacts(0, "NVIDIA H200", "sm_90", 139.8, True),),
    compiled_archs=("sm_80", "sm_90"),
    nvidia_gpu_count=1,
)


def one(warnings: list[str], *fragments: str) -> str:
    """The single warning containing every fragment."""
    hits = [w for w in warnings if all(f in w for f in fragments)]
    assert len(hits) == 1, warnings
    return hits[0]


@pytest.mark.parametrize(
    "facts",
    [CPU_BOX, rocm_box(), rocm_box("AMD Radeon RX 7900 XTX", "gfx1100", n=2), NVIDIA_BOX],
    ids=["cpu", "mi300x", "rx7900xtx-x2", "h200"],
)
def test_clean_machines_get_no_warnings(facts):
    assert diagnose(facts) == []


def test_this_machine_gives_a_report():
    facts = gather_facts()
    text = "\n".join(describe(facts))
    assert "backend: " in text and "HIP_VISIBLE_DEVICES" in text


def test_describe_shows_backend_versions_devices_and_env():
    facts = rocm_box(env={"HIP_VISIBLE_DEVICES": "0"})
    text = "\n".join(describe(facts))
    assert "torch 2.13.0+rocm7.2 (HIP 7.2.26015, CUDA none)" in text
    assert "backend: rocm; training device: cuda; auto precision: bf16" in text
    assert (
        "device 0: AMD Instinct MI300X; arch gfx942:sramecc+:xnack-; memory 191.5 GiB; bf16: yes"
        in text
    )
    assert "AMD support: official" in text
    assert "  HIP_VISIBLE_DEVICES=0 " in text and "  HSA_OVERRIDE_GFX_VERSION: unset " in text
    assert "backend: cuda" in "\n".join(describe(NVIDIA_BOX)) and "arch sm_90" in "\n".join(
        describe(NVIDIA_BOX)
    )
    assert "backend: cpu; training device: cpu; auto precision: fp32" in "\n".join(
        describe(CPU_BOX)
    )


def test_doctor_says_which_precision_the_cpu_trains_in():
    plain = "\n".join(describe(CPU_BOX))
    assert "auto precision: fp32 (CPU without native bf16" in plain
    assert "bf16: not native (no avx512_bf16/amx_bf16): training auto uses fp32" in plain
    amx = "\n".join(describe(replace(CPU_BOX, cpu_bf16=("avx512_bf16", "amx_bf16"))))
    assert "auto precision: bf16 (CPU with native bf16 (avx512_bf16, amx_bf16)" in amx
    assert "bf16: native (avx512_bf16, amx_bf16): training auto uses bf16 autocast" in amx


def test_cpu_or_cuda_torch_on_an_amd_machine_points_to_the_rocm_wheels():
    for build in ({"cuda_version": None}, {"cuda_version": "13.0"}):
        facts = replace(CPU_BOX, kfd_exists=True, kfd_accessible=True, amd_gpu_count=1, **build)
        w = one(diagnose(facts), "AMD GPU", "/dev/kfd exists")
        assert f"--index-url {ROCM_TORCH_INDEX}" in w and ("CUDA build" in w) == bool(
            build["cuda_version"]
        )
    only_tools = replace(CPU_BOX, rocm_tools=("rocm-smi",))
    assert ROCM_TORCH_INDEX in one(diagnose(only_tools), "rocm-smi found")


def test_cpu_torch_on_an_nvidia_machine():
    facts = replace(CPU_BOX, nvidia_gpu_count=2)
    assert "pip install torch" in one(diagnose(facts), "NVIDIA GPU", "CPU build")


def test_consumer_gpu_without_kernels_gets_the_override_with_its_caveat():
    rdna2 = rocm_box("AMD Radeon RX 6700 XT", "gfx1031")
    w = one(diagnose(rdna2), "gfx1031", "no kernels")
    assert "HSA_OVERRIDE_GFX_VERSION=10.3.0" in w and "does not support" in w
    rdna3_apu = rocm_box("AMD Radeon 780M", "gfx1103")
    assert "HSA_OVERRIDE_GFX_VERSION=11.0.0" in one(diagnose(rdna3_apu), "gfx1103")
    rdna1 = rocm_box("AMD Radeon RX 5700 XT", "gfx1010")
    assert "HSA_OVERRIDE" not in one(diagnose(rdna1), "gfx1010")


def test_kernels_decide_not_the_official_list():
    rx7600 = rocm_box(
        "AMD Radeon RX 7600", "gfx1102"
    )  # not on AMD's list, but the wheel has its kernels
    assert diagnose(rx7600) == []
    assert "AMD support: unofficial" in "\n".join(describe(rx7600))
    # without the wheel's list, the official list decides
    assert diagnose(replace(rx7600, compiled_archs=())) != []
    assert diagnose(replace(rocm_box(), compiled_archs=())) == []


def test_override_already_set_is_reported_as_not_helping():
    facts = rocm_box("AMD Radeon RX 6700 XT", "gfx1031", env={"HSA_OVERRIDE_GFX_VERSION": "10.3.1"})
    assert "does not map it" in one(diagnose(facts), "gfx1031")


def test_override_in_the_wrong_form_and_on_a_supported_gpu():
    assert "10.3.0" in one(
        diagnose(replace(CPU_BOX, env={"HSA_OVERRIDE_GFX_VERSION": "gfx1030"})),
        "major.minor.stepping",
    )
    assert "unset it" in one(
        diagnose(rocm_box(env={"HSA_OVERRIDE_GFX_VERSION": "9.4.2"})), "Instinct MI300X"
    )


def test_kfd_not_accessible_means_group_membership():
    facts = rocm_box(gpu_available=False, gpus=(), kfd_accessible=False)
    w = one(diagnose(facts), "/dev/kfd", "cannot open")
    assert "render" in w and "video" in w and "usermod" in w
    assert len(diagnose(facts)) == 1  # not also "no GPU visible"


def test_rocm_torch_without_kfd_names_the_docker_flags():
    facts = rocm_box(
        gpu_available=False, gpus=(), kfd_exists=False, kfd_accessible=False, amd_gpu_count=None
    )
    assert "--device=/dev/kfd" in one(diagnose(facts), "no /dev/kfd")


@pytest.mark.parametrize(
    "env,fragment",
    [
        ({"HIP_VISIBLE_DEVICES": "2"}, "HIP_VISIBLE_DEVICES=2 names GPU 2 but only 2"),
        ({"ROCR_VISIBLE_DEVICES": "0,4"}, "ROCR_VISIBLE_DEVICES=0,4 names GPU 4"),
        (
            {"ROCR_VISIBLE_DEVICES": "1", "HIP_VISIBLE_DEVICES": "1"},
            "HIP_VISIBLE_DEVICES=1 names GPU 1 but only 1",
        ),
        ({"CUDA_VISIBLE_DEVICES": "7"}, "CUDA_VISIBLE_DEVICES=7"),
        ({"HIP_VISIBLE_DEVICES": ""}, "hides every GPU"),
    ],
)
def test_visible_devices_naming_missing_gpus(env, fragment):
    facts = rocm_box(n=2, env=env)
    one(diagnose(facts), fragment)


def test_visible_devices_in_range_are_fine():
    assert (
        diagnose(rocm_box(n=2, env={"HIP_VISIBLE_DEVICES": "1", "ROCR_VISIBLE_DEVICES": "0,1"}))
        == []
    )
    assert diagnose(replace(NVIDIA_BOX, env={"CUDA_VISIBLE_DEVICES": "GPU-1234abcd"})) == []
    assert one(diagnose(replace(NVIDIA_BOX, env={"CUDA_VISIBLE_DEVICES": "1"})), "only 1 exist")


@pytest.mark.parametrize(
    "facts,precision",
    [
        (rocm_box(), "bf16"),  # MI300X
        (rocm_box("AMD Instinct MI250X", "gfx90a:sramecc+:xnack-"), "bf16"),
        (rocm_box("AMD Radeon RX 7900 XTX", "gfx1100"), "bf16"),  # RDNA3 WMMA
        (rocm_box("AMD Instinct MI100", "gfx908:sramecc+:xnack-"), "fp16"),
        (rocm_box("AMD Radeon PRO W6800", "gfx1030"), "fp16"),
        (NVIDIA_BOX, "bf16"),  # Hopper
        (replace(NVIDIA_BOX, gpus=(GpuFacts(0, "Tesla T4", "sm_75", 15.0, False),)), "fp16"),
        (CPU_BOX, "fp32"),
        (replace(CPU_BOX, cpu_bf16=("avx512_bf16",)), "bf16"),
        (replace(CPU_BOX, cpu_bf16=("avx512_bf16", "amx_bf16")), "bf16"),
    ],
)
def test_auto_precision_per_device_class(facts, precision):
    info = device_info_of(facts)
    chosen, why = explain_precision("auto", info, cpu_features=facts.cpu_bf16)
    assert chosen == precision
    assert why


@pytest.mark.parametrize(
    "arch,override",
    [
        ("gfx1031", "10.3.0"),
        ("gfx1032", "10.3.0"),
        ("gfx1102", "11.0.0"),
        ("gfx1151", "11.0.0"),
        ("gfx1010", None),
        ("gfx90c", None),
    ],
)
def test_override_suggestions(arch, override):
    assert hsa_override_for(arch) == override
