"""`rag eval`: question sets through the same path as `rag ask`, scored SQuAD-style."""

from __future__ import annotations

import collections
import json
import logging
import random
import re
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bench.measure import percentile
from .errors import ConfigError

log = logging.getLogger(__name__)

METRIC_KEYS = (
    "recall_at_k",
    "mrr",
    "containment",
    "f1",
    "refusal_accuracy",
    "false_refusal_rate",
    "refusal_accuracy_gate",
    "refusal_accuracy_gate_model",
    "false_refusal_rate_gate",
    "false_refusal_rate_gate_model",
    "withdrawn_right",
    "withdrawn_wrong",
    "containment_unverified",
    "p50_s",
    "p95_s",
    "tokens_per_s",
)

# Thresholds a gate trade-off table shows: answerability (and MiniLM cosines) of related
# passages run about 0.3 to 0.8.
GATE_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(0, 17))

# Which refusals each cumulative stage of the refusal path counts, by `Answer.support`.
STAGES = {
    "gate": ("gate",),
    "gate_model": ("gate", "model"),
}

_PUNCT = set(string.punctuation) | {"“", "”", "‘", "’", "–", "—"}


def normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, articles or extra spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def contains(text: str, answers: Sequence[str]) -> bool:
    t = normalize(text)
    return any(normalize(a) and normalize(a) in t for a in answers)


def f1(prediction: str, answers: Sequence[str]) -> float:
    """SQuAD token F1 against the best-matching gold answer."""
    pred = normalize(prediction).split()
    best = 0.0
    for a in answers:
        gold = normalize(a).split()
        common = collections.Counter(pred) & collections.Counter(gold)
        same = sum(common.values())
        if same == 0:
            continue
        p, r = same / len(pred), same / len(gold)
        best = max(best, 2 * p * r / (p + r))
    return best


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answers: tuple[str, ...]
    answerable: bool
    # The date the question is asked on (time-sensitive sets), and what kind of question.
    today: str = ""
    kind: str = ""
    # The questions asked before it in the same conversation (a follow-up set).
    history: tuple[str, ...] = ()


def load_questions(path: str | Path, *, limit: int | None = None, seed: int = 0) -> list[Question]:
    out: list[Question] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                out.append(
                    Question(
                        str(d["id"]),
                        d["question"],
                        tuple(d.get("answers") or ()),
                        bool(d.get("answerable", True)),
                        str(d.get("today") or ""),
                        str(d.get("kind") or ""),
                        tuple(str(h) for h in d.get("history") or ()),
                    )
                )
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(
                    f"{path}:{lineno}: not a question record ({e}); see shared/README.md"
                ) from None
    if limit is not None and limit < len(out):
        out = random.Random(seed).sample(out, limit)
    return out


def evaluate(
    rag: Any,
    questions: Sequence[Question],
    *,
    k: int,
    retrieval_only: bool = False,
    progress: Callable[[int, int], None] | None = None,
    today: str | None = None,
) -> dict[str, Any]:
    """Ask every question through `rag` (a `rag.RAG`); returns {"metrics", "records"}.
    Each question is read against `today` when given, else its own `today`, else the
    `today` setting or the clock."""
    records: list[dict[str, Any]] = []
    hits = rr = cont = f1s = cont_unverified = 0.0
    answerable = unanswerable = refused_right = refused_wrong = 0
    withdrawn_right = withdrawn_wrong = 0
    stage_right = dict.fromkeys(STAGES, 0)
    stage_wrong = dict.fromkeys(STAGES, 0)
    seconds: list[float] = []
    tps: list[float] = []
    for i, q in enumerate(questions, start=1):
        t0 = time.perf_counter()
        if retrieval_only:
            # A follow-up is searched as the chat would, its earlier questions unanswered.
            earlier = [{"role": "user", "content": h} for h in q.history]
            query = rag.standalone_query(q.question, earlier) if earlier else q.question
            sources = rag.retrieve(query, k=k)
            record: dict[str, Any] = {
                "query": query,
                "sources": [s.to_dict() for s in sources],
                "answerability": rag.answerability(query, sources).score,
            }
            found = True
            answer_text = draft = ""
            support = "supported"
            withdrawn = False
        else:
            asking = rag.chat(save=False) if q.history else rag
            for earlier in q.history:
                # The turns before a follow-up are asked, not scored.
                asking.ask(earlier, k=k, today=today or q.today or None)
            answer = asking.ask(q.question, k=k, today=today or q.today or None)
            sources = list(answer.sources)
            record = answer.to_dict()
            found = answer.found
            answer_text = answer.answer if found else ""
            # What the model said before verification withdrew it, if it did.
            draft = answer.draft or answer_text
            withdrawn = bool(answer.draft)
            support = answer.support.split(":")[0]
            if answer.timings.tokens_per_s:
                tps.append(answer.timings.tokens_per_s)
        seconds.append(time.perf_counter() - t0)
        rank = next((n for n, s in enumerate(sources, 1) if contains(s.text, q.answers)), 0)
        if q.answerable:
            answerable += 1
            hits += rank > 0
            rr += 1 / rank if rank else 0.0
            if not retrieval_only:
                cont += contains(answer_text, q.answers)
                f1s += f1(answer_text, q.answers)
                cont_unverified += contains(draft, q.answers)
                refused_wrong += not found
                if withdrawn:
                    right = contains(draft, q.answers)
                    withdrawn_right += right
                    withdrawn_wrong += not right
                for stage, kinds in STAGES.items():
                    stage_wrong[stage] += support in kinds
        else:
            unanswerable += 1
            refused_right += not found
            for stage, kinds in STAGES.items():
                stage_right[stage] += support in kinds
        record.update(
            kind=q.kind,
            id=q.id,
            history=list(q.history),
            question=q.question,
            gold=list(q.answers),
            answerable=q.answerable,
            retrieved_rank=rank,
            top_score=max((s.score for s in sources), default=0.0),
            answerability=record.get("answerability", 0.0),
        )
        records.append(record)
        if progress:
            progress(i, len(questions))

    def ratio(a: float, b: int) -> float | None:
        return round(a / b, 4) if b else None

    generated = not retrieval_only
    metrics = {
        "recall_at_k": ratio(hits, answerable),
        "mrr": ratio(rr, answerable),
        "containment": ratio(cont, answerable) if generated else None,
        "f1": ratio(f1s, answerable) if generated else None,
        "refusal_accuracy": ratio(refused_right, unanswerable) if generated else None,
        "false_refusal_rate": ratio(refused_wrong, answerable) if generated else None,
        **{
            f"refusal_accuracy_{stage}": ratio(stage_right[stage], unanswerable) if generated else None
            for stage in STAGES
        },
        **{
            f"false_refusal_rate_{stage}": ratio(stage_wrong[stage], answerable) if generated else None
            for stage in STAGES
        },
        # Answerable questions whose answer verification withdrew: right and wrong drafts.
        "withdrawn_right": withdrawn_right if generated and answerable else None,
        "withdrawn_wrong": withdrawn_wrong if generated and answerable else None,
        "containment_unverified": ratio(cont_unverified, answerable) if generated else None,
        "p50_s": round(percentile(seconds, 0.5), 3),
        "p95_s": round(percentile(seconds, 0.95), 3),
        "tokens_per_s": round(sum(tps) / len(tps), 1) if tps else None,
    }
    return {
        "metrics": metrics,
        "by_kind": by_kind(records) if generated else {},
        "settings": {
            "k": k,
            "retrieval_only": retrieval_only,
            "questions": len(questions),
            "answerable": answerable,
            "unanswerable": unanswerable,
        },
        "records": records,
    }


def by_kind(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per question kind (a question set's `kind` field): containment of the answerable
    questions, refusals of the unanswerable ones."""
    out: dict[str, dict[str, Any]] = {}
    for kind in sorted({r.get("kind", "") for r in records} - {""}):
        rs = [r for r in records if r.get("kind") == kind]
        ans = [r for r in rs if r["answerable"]]
        un = [r for r in rs if not r["answerable"]]
        out[kind] = {"questions": len(rs)}
        if ans:
            right = sum(r.get("found") is not False and contains(r.get("answer", ""), r["gold"]) for r in ans)
            out[kind]["containment"] = round(right / len(ans), 4)
        if un:
            out[kind]["refusal_accuracy"] = round(sum(r.get("found") is False for r in un) / len(un), 4)
    return out


def gate_tradeoff(
    records: Sequence[dict[str, Any]], thresholds: Sequence[float], *, key: str = "answerability"
) -> list[dict[str, float]]:
    """What a gate on `key` (`answerability` for `min_answerability`, `top_score` for
    `min_score`) would do to these records: for each threshold, the share of unanswerable
    questions refused and of answerable ones refused by mistake. A record refused for
    another reason stays refused; retrieval-only records count as answered. Records gated at
    the threshold they ran with tell nothing of lower thresholds: run with the gate off
    (`--min-answerability 0`) to draw the whole curve."""
    rows = []
    for t in thresholds:
        right = wrong = n_un = n_ans = 0
        for r in records:
            refused = r[key] < t or r.get("found") is False
            if r["answerable"]:
                n_ans += 1
                wrong += refused
            else:
                n_un += 1
                right += refused
        rows.append(
            {
                "threshold": round(float(t), 3),
                "refusal_accuracy": round(right / n_un, 4) if n_un else float("nan"),
                "false_refusal_rate": round(wrong / n_ans, 4) if n_ans else float("nan"),
            }
        )
    return rows


def choose_threshold(rows: Sequence[dict[str, float]], *, max_false: float = 0.2) -> dict[str, float]:
    """The row refusing the most unanswerable questions with false refusals <= `max_false`."""
    ok = [r for r in rows if r["false_refusal_rate"] <= max_false]
    return max(ok, key=lambda r: (r["refusal_accuracy"], -r["threshold"])) if ok else rows[0]


def plot_tradeoff(series: dict[str, Sequence[dict[str, float]]], path: str | Path) -> None:
    """Refusal accuracy against false refusals, one line per set of records (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(4.8, 3.6), dpi=100)
    for label, rows in series.items():
        ax.plot(
            [r["false_refusal_rate"] for r in rows],
            [r["refusal_accuracy"] for r in rows],
            marker=".",
            label=label,
        )
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.axvline(0.2, color="tab:red", linestyle="--", linewidth=1)
    ax.axhline(0.6, color="tab:red", linestyle="--", linewidth=1)
    ax.set_xlabel("false refusals (answerable questions refused)")
    ax.set_ylabel("refusal accuracy (unanswerable refused)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("the gate before the model", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
