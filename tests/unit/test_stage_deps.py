"""dvc.yaml's source deps are exactly the modules each stage's command imports, and JSON reports
are strict (issue "Trust the cache and the gate", items 1 and 5)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import yaml

from helpers import ROOT
from medqa import provenance
from medqa.provenance import (
    STAGE_COMMANDS,
    dvc_dep_paths,
    module_closure,
    sources_digest,
    stage_sources,
)


def dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(STAGE_COMMANDS))
def test_dvc_yaml_lists_every_module_the_stage_imports(stage):
    listed = sorted(
        d for d in dvc_stages()[stage]["deps"] if isinstance(d, str) and d.startswith("src/")
    )
    assert listed == dvc_dep_paths(stage), (
        f"fix dvc.yaml's {stage} deps: see `python -m medqa.provenance`"
    )


def test_every_dvc_stage_is_known_to_provenance():
    assert set(dvc_stages()) == set(STAGE_COMMANDS)


def test_lazy_and_transitive_imports_count():
    names = {p.name for p in stage_sources("tokenize")}
    # features imports modelsource (which changes every window when the tokenizer loads differently),
    # the cli's helpers import config lazily inside project_params: both must be deps
    assert {
        "modelsource.py",
        "features.py",
        "config.py",
        "errors.py",
        "fileio.py",
        "cli.py",
        "cli_common.py",
        "stage_commands.py",
    } <= names
    assert "training.py" not in names and "registry.py" not in names
    train = {p.name for p in stage_sources("train")}
    assert {
        "training.py",
        "modelsource.py",
        "scoring.py",
        "decoding.py",
        "device.py",
        "tracking.py",
    } <= train
    assert {p.name for p in module_closure({"medqa.errors"})} == {"errors.py"}


# modules only the tool commands (predict, models, promote, rollback, serve, doctor) run
TOOL_ONLY = {"predict_command.py", "tool_commands.py", "doctor.py", "server.py", "qa_model.py"}


@pytest.mark.parametrize("stage", list(STAGE_COMMANDS))
def test_no_tool_only_module_is_a_stage_dep(stage):
    assert not TOOL_ONLY & {p.name for p in stage_sources(stage)}


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of src/medqa that provenance reads instead, to edit freely."""
    copy = tmp_path / "medqa"
    shutil.copytree(provenance.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "PACKAGE_DIR", copy)
    yield copy
    provenance._tree.cache_clear()  # parsed trees of files edited in the copy


def deps_and_digests() -> dict[str, tuple[list[str], str]]:
    provenance._tree.cache_clear()
    return {
        stage: ([p.name for p in stage_sources(stage)], sources_digest(stage_sources(stage)))
        for stage in STAGE_COMMANDS
    }


@pytest.mark.parametrize(
    "module,help_text,command_import",
    [
        ("tool_commands.py", "address to bind", "    from medqa.doctor import doctor_report\n"),
        (
            "predict_command.py",
            "records per model call",
            "    from medqa.errors import DataError\n",
        ),
    ],
)
def test_editing_a_tool_module_changes_no_stage(package_copy, module, help_text, command_import):
    before = deps_and_digests()
    tools = package_copy / module
    text = tools.read_text()
    assert text.count(help_text) == 1 and command_import in text
    edited = text.replace(help_text, "reworded help").replace(
        command_import, command_import + "    import medqa.qa_model\n"
    )
    tools.write_text(edited + "\n\ndef cmd_extra(args):\n    import medqa.server\n")
    assert deps_and_digests() == before
    # what a tool module runs for every command (its module level) does count
    tools.write_text("import medqa.server\n" + text)
    assert all("server.py" in names for names, _ in deps_and_digests().values())


def test_a_stage_command_counts_for_its_own_stage_only(package_copy):
    before = deps_and_digests()
    stages = package_copy / "stage_commands.py"
    text = stages.read_text()
    marker = "    from medqa.features import tokenize_splits\n"
    stages.write_text(text.replace(marker, marker + "    import medqa.doctor\n"))
    after = deps_and_digests()
    assert "doctor.py" in after["tokenize"][0]
    for stage in STAGE_COMMANDS:
        assert after[stage][1] != before[stage][1]  # the file itself is every stage's dep
        assert ("doctor.py" in after[stage][0]) == (stage == "tokenize")


@pytest.mark.parametrize(
    "argv",
    [
        ["validate"],
        ["-q", "--params", "p.yaml", "validate", "--raw", "r", "--out", "v"],
        ["tokenize", "--validated", "v"],
        ["train", "--state", "s"],
        ["evaluate"],
        ["evaluate", "--model", "models:/m@champion", "--precision", "bf16"],
        ["register", "--metrics", "m.json"],
    ],
)
def test_stages_parse_the_same_without_the_tool_commands(argv, monkeypatch):
    """Why provenance may leave the tool modules out: their parsers never touch a stage's arguments."""
    from medqa import cli, predict_command, tool_commands

    with_tools = vars(cli.build_parser().parse_args(argv))
    # the one thing the tools add to a stage's arguments: evaluate's ad-hoc mode, which the stage
    # hands over to without running it (cmd_evaluate)
    assert with_tools.pop("adhoc", None) is (
        tool_commands.cmd_evaluate_adhoc if argv[0] == "evaluate" else None
    )
    for tools in (predict_command, tool_commands):
        monkeypatch.setattr(tools, "add_parsers", lambda sub: None)
    assert vars(cli.build_parser().parse_args(argv)) == with_tools


def test_a_module_edit_changes_the_train_fingerprint(monkeypatch, tmp_path):
    import medqa.train_state as t
    from medqa.config import Params
    from medqa.device import DeviceInfo

    src = tmp_path / "mod.py"
    src.write_text("x = 1\n")
    monkeypatch.setattr(t, "stage_sources", lambda stage: [src])
    device = DeviceInfo(backend="cpu", device="cpu", name="x86_64", arch="x86_64", bf16=False)
    args = (Params(), "features", {"data_md5_train": "a"}, "weights", device, "fp32")
    before = t.training_fingerprint(*args)
    assert t.training_fingerprint(*args) == before
    src.write_text("x = 2\n")
    assert t.training_fingerprint(*args) != before
    for i, other in [(1, "other-features"), (3, "other-weights"), (5, "bf16")]:
        changed = list(args)
        changed[i] = other
        assert t.training_fingerprint(*changed) != t.training_fingerprint(*args)


def test_reports_never_hold_nan(tmp_path):
    from medqa.fileio import write_json_atomic, write_jsonl_atomic

    write_json_atomic(tmp_path / "m.json", {"f1": math.nan, "ci": (math.inf, 0.5), "n": 0})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"f1": None, "ci": [None, 0.5], "n": 0}
    write_jsonl_atomic(tmp_path / "p.jsonl", [{"score": -math.inf}])
    assert json.loads((tmp_path / "p.jsonl").read_text()) == {"score": None}


def test_the_validate_stages_data_modules_are_deps_of_validate_only():
    """Editing a reader, a check or a repair rule reruns validate (and what its outputs feed), not
    the other stages' code deps; ad-hoc evaluation, which uses them too, is a tool."""
    data_modules = {"readers.py", "checks.py", "repairs.py", "validate.py", "adhoc_eval.py"}
    for stage in STAGE_COMMANDS:
        names = {p.name for p in stage_sources(stage)}
        expected = data_modules - {"adhoc_eval.py"} if stage == "validate" else set()
        assert names & data_modules == expected, stage
