"""Collect the learning-curve / recipe study from ``dvc exp show --json`` into a table and a plot.

The study itself is DVC experiments (``scripts/study.sh`` queues them): each is a full pipeline run
with ``-S`` overrides, so DVC keeps its params, metrics and outputs. This module only reads them
back: one row per experiment, runs that differ only in ``train.seed`` grouped into mean and spread,
and the learning curve (test/dev F1 against the share of training questions) drawn as an SVG.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medqa.config import Params, as_dict
from medqa.fileio import write_json_atomic, write_text_atomic

# the knobs a study varies, as (params group, key, column header); "data" is not a params group but the
# validate stage's count of training questions, so runs on a grown dataset are never taken for seeds
KNOBS = [
    ("data", "train_questions", "train q"),
    ("tokenize", "train_fraction", "train share"),
    ("train", "epochs", "epochs"),
    ("tokenize", "max_seq_length", "max len"),
    ("train", "learning_rate", "lr"),
    ("train", "head_learning_rate", "head lr"),
    ("train", "layer_lr_decay", "LLRD"),
    ("train", "warmup_ratio", "lr warm-up"),
    ("train", "weight_decay", "wd"),
    ("train", "batch_size", "batch"),
]

DEFAULTS = as_dict(Params())


def _exp_revs(show: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, data) of every finished experiment in ``dvc exp show --json`` output, and of each
    commit the experiments start from (its committed run is the study's reference point)."""
    for baseline in show:
        if baseline.get("experiments") and baseline.get("rev") != "workspace":
            yield f"commit {baseline['rev'][:7]}", baseline.get("data") or {}
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                if data.get("status", "Success") == "Success" and data.get("metrics"):
                    yield rev.get("name") or exp.get("name") or rev.get("rev", "?")[:7], data


def rows_from_exp_show(show: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per experiment: its knobs, seed, and dev/test figures. ``show`` may concatenate the
    output of several repositories (copies of one project): a name seen twice is read once."""
    rows, seen = [], set()
    for name, data in _exp_revs(show):
        if name in seen:
            continue
        seen.add(name)
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        found = data.get("metrics") or {}  # the headline file; metrics.json before it existed
        metrics = (
            found.get("reports/headline.json") or found.get("reports/metrics.json") or {}
        ).get("data") or {}
        if "f1" not in metrics:
            continue
        validation = ((data.get("metrics") or {}).get("reports/validation.json") or {}).get(
            "data"
        ) or {}
        row = {
            "name": name,
            "seed": params.get("train", {}).get("seed"),
            "data.train_questions": (
                validation.get("written_by_split") or validation.get("accepted_by_split") or {}
            ).get("train"),
        }
        for group, key, _ in KNOBS[
            1:
        ]:  # a key missing from params.yaml (older code) has its built-in default
            row[f"{group}.{key}"] = params.get(group, {}).get(key, DEFAULTS.get(f"{group}.{key}"))
        row.update(
            test_f1=metrics["f1"],
            test_em=metrics.get("exact"),
            dev_f1=metrics.get("dev_f1"),
            lead=metrics.get("lead_over_best_baseline"),
        )
        rows.append(row)
    return rows


def group_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that differ only in the seed become one: mean F1, its spread, and the seed count."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[f"{g}.{k}"] for g, k, _ in KNOBS)].append(r)
    out = []
    for members in groups.values():
        test = [m["test_f1"] for m in members]
        dev = [m["dev_f1"] for m in members if m["dev_f1"] is not None]
        out.append(
            {
                **{k: v for k, v in members[0].items() if k not in ("name", "seed")},
                "names": sorted(m["name"] for m in members),
                "seeds": len(members),
                "test_f1": statistics.mean(test),
                "test_f1_sd": statistics.stdev(test) if len(test) > 1 else None,
                "dev_f1": statistics.mean(dev) if dev else None,
                "test_em": statistics.mean(m["test_em"] for m in members),
            }
        )
    return sorted(out, key=lambda r: -r["test_f1"])


def markdown_table(groups: list[dict[str, Any]]) -> str:
    """The study table, best test F1 first."""
    head = [h for _, _, h in KNOBS] + ["seeds", "dev F1", "test F1", "test EM", "experiments"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in groups:
        sd = f" ± {r['test_f1_sd']:.3f}" if r["test_f1_sd"] is not None else ""
        dev = f"{r['dev_f1']:.3f}" if r["dev_f1"] is not None else "-"
        cells = [str(r[f"{g}.{k}"]) for g, k, _ in KNOBS] + [
            str(r["seeds"]),
            dev,
            f"{r['test_f1']:.3f}{sd}",
            f"{r['test_em']:.3f}",
            ", ".join(r["names"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def learning_curve(groups: list[dict[str, Any]], equal_steps: bool = False) -> list[dict[str, Any]]:
    """Points of the largest family of runs that differ only in the share of training questions.

    With ``equal_steps`` the family's epochs are scaled inversely to the share (25% of the questions for
    4× the epochs), so every point takes the same number of optimizer steps and only the amount of
    distinct labelled data changes; otherwise every point has the same epochs (fewer steps for less data).
    """
    skip = (
        {"train_fraction", "epochs"} if equal_steps else {"train_fraction"}
    )  # data grown: another family
    families: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in groups:
        key = tuple(r[f"{g}.{k}"] for g, k, _ in KNOBS if k not in skip)
        if equal_steps:
            key += (round((r["tokenize.train_fraction"] or 1) * (r["train.epochs"] or 0), 6),)
        families[key].append(r)
    best = max(
        families.values(), key=lambda f: len({r["tokenize.train_fraction"] for r in f}), default=[]
    )
    return sorted(best, key=lambda r: r["tokenize.train_fraction"]) if len(best) > 1 else []


def write_study(show: list[dict[str, Any]], out_dir: Path) -> list[dict[str, Any]]:
    """reports/study.md (table), study.json (rows) and study_curve.svg (learning curve, if any)."""
    from medqa.plots import learning_curve_svg  # matplotlib: only when a study is written

    groups = group_seeds(rows_from_exp_show(show))
    curves = {
        label: c
        for label, c in (
            ("same epochs", learning_curve(groups)),
            ("same steps", learning_curve(groups, equal_steps=True)),
        )
        if c
    }
    text = [
        "# Recipe and learning-curve study",
        "",
        "DVC experiments (`scripts/study.sh`); test F1 is mean ± sd over seeds where there are several.",
        "",
        markdown_table(groups),
    ]
    if curves:
        learning_curve_svg(Path(out_dir) / "study_curve.svg", curves)
        text += ["", "![learning curve](study_curve.svg)", ""]
        for label, curve in curves.items():
            pts = ", ".join(
                f"{p['tokenize.train_fraction']:.0%} × {p['train.epochs']:g} epochs → {p['test_f1']:.3f}"
                for p in curve
            )
            text.append(f"- {label} (test F1): {pts}")
    write_text_atomic(Path(out_dir) / "study.md", "\n".join(text))
    write_json_atomic(Path(out_dir) / "study.json", groups)
    return groups


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m medqa.study",
        description="Tabulate the DVC experiments of the study into reports/.",
    )
    ap.add_argument(
        "--out", type=Path, default=Path("reports"), help="folder for study.md/.json/_curve.svg"
    )
    ap.add_argument(
        "--show-json",
        type=Path,
        nargs="+",
        help="read `dvc exp show --json` output from these files (e.g. one per copy of the project "
        "the experiments ran in) instead of running it here",
    )
    args = ap.parse_args(argv)
    if args.show_json:
        show = [b for f in args.show_json for b in json.loads(f.read_text())]
    else:
        res = subprocess.run(
            [sys.executable, "-m", "dvc", "exp", "show", "--json"], capture_output=True, text=True
        )
        if res.returncode:
            print(f"dvc exp show failed: {res.stderr.strip()[-500:]}", file=sys.stderr)
            return 1
        show = json.loads(res.stdout)
    groups = write_study(show, args.out)
    print(markdown_table(groups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
