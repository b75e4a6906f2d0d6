"""`rag eval`: SQuAD scoring, and the retrieval-only run through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rag.evaluate import METRIC_KEYS, choose_threshold, contains, f1, gate_tradeoff, normalize, plot_tradeoff

from .conftest import shared


def test_squad_normalisation_and_f1():
    assert normalize("The  Battle of Hastings!") == "battle of hastings"
    assert contains("It was in the 10th and 11th centuries.", ["10th and 11th centuries"])
    assert f1("the 10th and 11th centuries", ["10th and 11th centuries"]) == 1.0
    assert f1("in the 10th and 11th centuries", ["10th and 11th centuries"]) == pytest.approx(8 / 9)
    assert 0 < f1("Denmark and Norway", ["Denmark, Iceland and Norway"]) < 1
    assert f1("", ["x"]) == 0.0


def test_gate_tradeoff_counts_refusals_by_threshold():
    records = [
        {"answerable": True, "top_score": 0.8},
        {"answerable": True, "top_score": 0.4},
        {"answerable": True, "top_score": 0.9, "found": False},  # the model refused it already
        {"answerable": False, "top_score": 0.3},
        {"answerable": False, "top_score": 0.6},
    ]
    rows = gate_tradeoff(records, [0.0, 0.5, 0.7], key="top_score")
    assert [(r["refusal_accuracy"], r["false_refusal_rate"]) for r in rows] == [
        (0.0, round(1 / 3, 4)),
        (0.5, round(2 / 3, 4)),
        (1.0, round(2 / 3, 4)),
    ]
    assert choose_threshold(rows, max_false=0.5)["threshold"] == 0.0
    assert choose_threshold(rows, max_false=0.7)["threshold"] == 0.7
    # The default gate reads the records' answerability.
    by_answerability = [{**r, "answerability": 1 - r["top_score"]} for r in records]
    rows = gate_tradeoff(by_answerability, [0.5])
    assert (rows[0]["refusal_accuracy"], rows[0]["false_refusal_rate"]) == (0.5, round(2 / 3, 4))


def test_gate_tradeoff_plot_is_written(tmp_path):
    rows = gate_tradeoff(
        [{"answerable": True, "answerability": 0.5}, {"answerable": False, "answerability": 0.2}], [0.1, 0.3]
    )
    plot_tradeoff({"one set": rows}, tmp_path / "gate.png")
    assert (tmp_path / "gate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_eval_retrieval_only(tmp_path):
    squad = shared("eval", "squad-dev")
    out = tmp_path / "report.json"
    env = {**os.environ}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "rag.cli",
            "eval",
            "--articles",
            str(squad / "articles.jsonl"),
            "--qa",
            str(squad / "qa.jsonl"),
            "--index",
            str(tmp_path / "idx"),
            "--limit",
            "40",
            "--seed",
            "1",
            "--retrieval-only",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    report = json.loads(out.read_text())
    assert tuple(report["metrics"]) == METRIC_KEYS
    assert report["metrics"]["recall_at_k"] >= 0.9
    assert len(report["records"]) == 40
    record = report["records"][0]
    assert {"gold", "question", "sources", "retrieved_rank", "top_score", "answerability"} <= set(record)
    assert 0 < max(r["answerability"] for r in report["records"]) <= 1
    # Unanswerable questions in the set: the answerability gate's trade-off is printed and saved.
    assert "min_answerability" in p.stdout
    assert [r["threshold"] for r in report["gate"]][:3] == [0.0, 0.05, 0.1]
    assert report["gate"][0]["false_refusal_rate"] == 0.0
