"""The study's data subsets and its read-back of `dvc exp show --json`."""

from __future__ import annotations

import json

from medqa.features import train_subset
from medqa.study import group_seeds, learning_curve, rows_from_exp_show, write_study


def test_train_subsets_are_nested_deterministic_and_keep_order():
    rows = [{"id": str(i)} for i in range(40)]
    quarter, half = train_subset(rows, 0.25), train_subset(rows, 0.5)
    assert len(quarter) == 10 and len(half) == 20
    assert {r["id"] for r in quarter} < {r["id"] for r in half}
    assert quarter == train_subset(rows, 0.25)
    assert [int(r["id"]) for r in half] == sorted(int(r["id"]) for r in half)
    assert train_subset(rows, 1.0) is rows


def exp(name, fraction, seed, test_f1, dev_f1, lr=2e-4, epochs=3, train_questions=1307):
    params = {
        "tokenize": {"train_fraction": fraction, "max_seq_length": 384},
        "train": {
            "learning_rate": lr,
            "head_learning_rate": 3e-3,
            "epochs": epochs,
            "warmup_ratio": 0.1,
            "weight_decay": 0.01,
            "batch_size": 32,
            "seed": seed,
        },
    }
    metrics = {
        "f1": test_f1,
        "exact": test_f1 / 2,
        "dev_f1": dev_f1,
        "lead_over_best_baseline": 0.1,
    }
    validation = {"accepted_by_split": {"train": train_questions, "dev": 270, "test": 267}}
    return {
        "rev": name + "0000000",
        "name": name,
        "data": {
            "status": "Success",
            "params": {"params.yaml": {"data": params}},
            "metrics": {
                "reports/metrics.json": {"data": metrics},
                "reports/validation.json": {"data": validation},
            },
        },
    }


SHOW = [
    {"rev": "workspace", "data": {}},
    {
        "rev": "abcdef1234",
        "name": "main",
        "data": exp("base", 1.0, 42, 0.34, 0.40)["data"],
        "experiments": [
            {"name": "lc-025-s42", "revs": [exp("lc-025-s42", 0.25, 42, 0.10, 0.12)]},
            {"name": "lc-050-s42", "revs": [exp("lc-050-s42", 0.5, 42, 0.20, 0.22)]},
            {"name": "lc-050-s7", "revs": [exp("lc-050-s7", 0.5, 7, 0.24, 0.26)]},
            {"name": "lr-1e-4", "revs": [exp("lr-1e-4", 1.0, 42, 0.18, 0.2, lr=1e-4)]},
            {"name": "lc-050-eq", "revs": [exp("lc-050-eq", 0.5, 42, 0.30, 0.31, epochs=6)]},
            {"name": "grown", "revs": [exp("grown", 1.0, 42, 0.40, 0.41, train_questions=1654)]},
            {
                "name": "failed",
                "revs": [
                    {"rev": "f", "name": "failed", "data": {"status": "Failed", "metrics": {}}}
                ],
            },
        ],
    },
]


def test_rows_groups_and_curve_from_exp_show(tmp_path):
    rows = rows_from_exp_show(SHOW)
    assert sorted(r["name"] for r in rows) == [
        "commit abcdef1",
        "grown",
        "lc-025-s42",
        "lc-050-eq",
        "lc-050-s42",
        "lc-050-s7",
        "lr-1e-4",
    ]
    assert rows_from_exp_show(SHOW + SHOW) == rows  # the same project's output twice: each run once
    assert {r["train.layer_lr_decay"] for r in rows} == {
        1.0
    }  # not in these params.yaml: the built-in default
    groups = group_seeds(rows)
    half = next(g for g in groups if g["tokenize.train_fraction"] == 0.5 and g["train.epochs"] == 3)
    assert half["seeds"] == 2 and abs(half["test_f1"] - 0.22) < 1e-12 and half["test_f1_sd"] > 0
    curve = learning_curve(groups)
    assert [p["tokenize.train_fraction"] for p in curve] == [0.25, 0.5, 1.0]
    assert [round(p["test_f1"], 3) for p in curve] == [0.10, 0.22, 0.34]
    same_steps = learning_curve(groups, equal_steps=True)  # 50% × 6 epochs beside 100% × 3 epochs
    assert [(p["tokenize.train_fraction"], p["train.epochs"]) for p in same_steps] == [
        (0.5, 6),
        (1.0, 3),
    ]

    write_study(SHOW, tmp_path)
    table = (tmp_path / "study.md").read_text()
    assert "0.340" in table and "0.220 ± 0.028" in table and "lr-1e-4" in table
    assert "same steps (test F1): 50% × 6 epochs → 0.300, 100% × 3 epochs → 0.340" in table
    svg = (tmp_path / "study_curve.svg").read_text()
    assert "<svg" in svg and "dev F1, same steps" in svg  # matplotlib keeps labels as text
    assert "stroke-dasharray" in svg  # the second curve is dashed
    assert (
        len(json.loads((tmp_path / "study.json").read_text())) == 6
    )  # the grown-data run is not a seed of "base"
