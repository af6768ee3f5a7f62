"""The model card of a registered version, written by the register stage from the run's own records.

A clinician or reviewer deciding whether to use a version should not have to piece it together from
run tags: the card says what the model is for (and not for), what it was trained on (by content
hash), with which recipe, code and libraries, how well it scores with confidence intervals, per
question type, how far its confidence can be trusted, the answer policy, the baselines it beats and
its known limits. Everything in it is read from the evaluate stage's metrics and the version's
lineage tags; nothing is typed in by hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from medqa.reports import figure

DISCLAIMER = (
    "**Research use only. Not medical advice.** This model reads an answer out of a passage it is "
    "given; it does not know medicine, can be wrong when it is confident, and must not inform the "
    "care of a patient. Trained and evaluated on question-answer pairs written for this project "
    "about age-related macular degeneration (AMD); no patient data."
)

LIMITATIONS = (
    "Extractive only: it can answer only with a span of the given passage, and abstains when it "
    "finds none likely.",
    "Small test split: every figure is uncertain (see the 95% intervals); per-type figures rest "
    "on few questions.",
    "Confidence is calibrated on the dev split of the same data: on text unlike it (another "
    "disease, another writing style) it may be over- or under-confident again.",
    "A question longer than the model's windows is refused, not answered.",
)


def _ci(pair: Any) -> str:
    if not pair or len(pair) != 2:
        return ""
    return f" (95% CI {figure(pair[0], '.3f')}–{figure(pair[1], '.3f')})"


def _scores(m: Mapping[str, Any]) -> list[str]:
    lines = [
        "| figure | value |",
        "|---|---|",
        f"| test F1 | {figure(m.get('f1'))}{_ci(m.get('f1_ci95'))} |",
        f"| test exact match | {figure(m.get('exact'))} |",
        f"| answerable F1 (n={m.get('has_ans_n')}) | {figure(m.get('has_ans_f1'))} |",
        f"| unanswerable F1 (n={m.get('no_ans_n')}) | {figure(m.get('no_ans_f1'))} |",
    ]
    lines += [f"| baseline {k} F1 | {figure(v)} |" for k, v in m.get("baselines_f1", {}).items()]
    by_type = m.get("by_type") or {}
    if by_type:
        lines += ["", "| question type | n | F1 | EM |", "|---|---:|---:|---:|"]
        lines += [
            f"| {t} | {s['n']} | {figure(s['f1'], '.3f')} | {figure(s['exact'], '.3f')} |"
            for t, s in by_type.items()
        ]
    return lines


def _confidence(c: Mapping[str, Any]) -> list[str]:
    if not c:
        return ["No calibration was recorded for this version."]
    floor = c.get("policy_min_confidence")
    coverage = c.get("coverage_at_f1", {})
    raw = c.get("coverage_at_f1_raw_score", {})
    chosen = (c.get("signals") or {}).get("chosen")
    lines = [
        f"Confidence is the probability that an answer is exactly right ({c.get('right_means')}), "
        f"fitted on dev and checked on the {c.get('answered_n')} answered test questions. "
        + (f"It reads {', '.join(chosen)} (chosen on dev)." if chosen else ""),
        "",
        "| figure | calibrated | raw span score |",
        "|---|---:|---:|",
        f"| expected calibration error | {figure(c.get('ece'), '.3f')}{_ci(c.get('ece_ci95'))} "
        f"| {figure(c.get('ece_raw_score'), '.3f')} |",
        f"| Brier score | {figure(c.get('brier'), '.3f')} | {figure(c.get('brier_raw_score'), '.3f')} |",
        f"| area under risk–coverage | {figure(c.get('aurc'), '.3f')} "
        f"| {figure(c.get('aurc_raw_score'), '.3f')} |",
    ]
    lines += [
        f"| coverage at answered F1 ≥ {t} | {figure(v, '.1%')} | {figure(raw.get(t), '.1%')} |"
        for t, v in coverage.items()
    ]
    policy = (
        f"answers only at confidence ≥ {figure(floor, '.3f')} (chosen on dev for "
        f"`evaluate.target_f1`): on test it answered {figure(c.get('policy_coverage'), '.1%')} of "
        f"the questions at F1 {figure(c.get('policy_answered_f1'), '.3f')}"
        if floor is not None
        else "off: every answer the abstention threshold lets through is given"
    )
    return [*lines, "", f"**Answer policy:** {policy}. A request may ask for another floor."]


def model_card(name: str, version: str, metrics: Mapping[str, Any], tags: Mapping[str, str]) -> str:
    """The card as Markdown: from ``metrics`` (the evaluate stage's metrics.json) and the version's
    ``tags`` (its figures and lineage)."""
    params = json.loads(tags.get("params") or "{}")
    recipe = ", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "unknown"
    parts = [
        f"# {name} v{version}",
        "",
        DISCLAIMER,
        "",
        "## Intended use",
        "Extractive question answering over clinical text about AMD, for research on clinical "
        "NLP: given a passage and a question, return the span that answers it, with a calibrated "
        "confidence, or abstain and say why.",
        "",
        "## Provenance",
        f"- base model: `{tags.get('base_model', 'unknown')}`",
        f"- training data: train md5 `{tags.get('data_md5_train', 'unknown')}`, dev md5 "
        f"`{tags.get('data_md5_dev', 'unknown')}`; test md5 `{tags.get('test_md5', 'unknown')}` "
        f"({tags.get('test_n', '?')} questions)",
        f"- recipe: {recipe}",
        f"- code: git `{tags.get('git_commit', 'unknown')}`; environment lock (uv.lock) sha256 "
        f"`{tags.get('env_lock_sha256', 'unknown')}`",
        f"- trained on: {tags.get('device', 'unknown')}; served at {tags.get('precision', 'fp32')}, "
        f"engine {tags.get('engine', 'eager')}"
        + (f" ({metrics['engine_reason']})" if metrics.get("engine_reason") else ""),
        f"- training run: {tags.get('run_link', tags.get('run_id', 'unknown'))}",
        "",
        "## Scores (test split)",
        *_scores(metrics),
        "",
        "## Confidence and the answer policy",
        *_confidence(metrics.get("calibration") or {}),
        "",
        "Plots: `reliability.png` (reliability diagram) and `risk_coverage.png` beside this card.",
        "",
        "## Known limitations",
        *[f"- {line}" for line in LIMITATIONS],
    ]
    return "\n".join(parts) + "\n"
