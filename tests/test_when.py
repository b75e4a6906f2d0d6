"""Time in questions: read by dateparser, applied as date filters, a recency preference and
date order; the refusal when no article is from the asked time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

import rag
from rag import prompt as P
from rag.evaluate import evaluate, load_questions
from rag.retrieval import answering, answering_alike, by_date, newest_first
from rag.store import ChunkRow
from rag.when import QueryTime, read, today_of
from tests.test_api import CannedGenerator

TIME_SET = Path(__file__).parent / "data" / "time"
TODAY = date(2026, 12, 1)


@pytest.mark.parametrize(
    ("question", "since", "until"),
    [
        ("Who won the Northvale marathon in 2024?", "2024-01-01", "2024-12-31"),
        ("What was the tram's cost in March 2024?", "2024-03-01", "2024-03-31"),
        ("What happened with the ferries yesterday?", "2026-11-30", "2026-11-30"),
        ("What happened at the harbour last week?", "2026-11-24", "2026-12-01"),
        ("What did the bank do over the past two weeks?", "2026-11-17", "2026-12-01"),
        ("news from the last 3 days", "2026-11-28", "2026-12-01"),
        ("What happened this year?", "2026-01-01", "2026-12-01"),
        ("What happened last year?", "2025-01-01", "2025-12-31"),
        ("What did the council decide today?", "2026-12-01", "2026-12-01"),
        ("What did the mayor say since March 2025?", "2025-03-01", ""),
        ("What was reported before November 2024?", "", "2024-10-31"),
        # The election is in November: the month itself is kept.
        ("What was said before the election in November 2024?", "", "2024-11-30"),
        ("What was said between January 2024 and March 2024?", "2024-01-01", "2024-03-31"),
    ],
)
def test_dates_in_questions_become_publication_ranges(question, since, until):
    when = read(question, TODAY)
    assert (when.since.isoformat() if when.since else "") == since, when
    assert (when.until.isoformat() if when.until else "") == until, when
    assert when.expression and when.expression in question


@pytest.mark.parametrize(
    "question",
    [
        "Super Bowl 2021 location",  # a year naming an event, not when it was written about
        "Who won the 2022 World Cup?",
        "Which country won the most medals at the 2018 Winter Olympics?",
        "Who may win the race?",
        "What is the second largest city?",
        "In which year did Apple buy Beats?",
        "How much aluminum could Russia sell to the United States?",
    ],
)
def test_questions_without_a_time_have_no_range(question):
    assert not read(question, TODAY).bounded


def test_recency_and_timeline_words():
    assert read("Who is the current chief executive?", TODAY).recency
    assert read("What is the latest cost estimate?", TODAY).recency
    assert read("Is she still mayor?", TODAY).recency
    assert not read("Who became chief executive?", TODAY).recency
    assert read("How did the wind farm project develop?", TODAY).timeline
    assert read("Timeline of the tram line", TODAY).timeline
    assert not read("Where is the wind farm?", TODAY).timeline
    assert read("What happened in Riverton yesterday?", TODAY).digest
    assert read("Any news from the harbour this week?", TODAY).digest
    assert not read("What did the mayor announce last week?", TODAY).digest


def test_labels_say_the_range_and_the_words():
    assert read("What happened last week?", TODAY).label() == "since 2026-11-24 (last week)"
    assert read("What happened yesterday?", TODAY).label() == "2026-11-30 (yesterday)"
    assert read("What is the latest?", TODAY).label() == "newest first"
    assert (
        QueryTime(TODAY, "in 2021", date(2021, 1, 1), date(2021, 12, 31)).span() == "2021-01-01 to 2021-12-31"
    )


def test_the_question_range_narrows_the_users_filters():
    when = read("Who won in 2024?", TODAY)
    mine = rag.Filters(source=["Sports Wire"], since="2024-06-01")
    narrowed = when.filters(mine)
    assert narrowed is not None
    assert narrowed.source == ("Sports Wire",)
    assert (narrowed.since, narrowed.until) == ("2024-06-01", "2024-12-31")
    assert when.filters(rag.Filters(since="2025-01-01")) is None  # the two never meet
    assert read("Who won?", TODAY).filters(mine) == mine


def test_today_comes_from_the_setting_or_the_clock():
    assert today_of("2026-12-01") == TODAY
    assert today_of("") == date.today()
    with pytest.raises(rag.ConfigError, match="'yesterday' is not a date; write it as YYYY-MM-DD"):
        today_of("yesterday")
    with pytest.raises(rag.ConfigError, match="today='1st Dec'"):
        rag.Settings(today="1st Dec")
    assert rag.Settings.load().today == ""


def _row(i: int, day: str) -> ChunkRow:
    return ChunkRow(i, f"a{i}", 0, 0, 1, "x", "", day, "", "", "")


def test_among_the_passages_that_answer_the_newest_comes_first():
    rows = [_row(1, "2023-04-12"), _row(2, "2026-03-12"), _row(3, ""), _row(4, "2026-10-02")]
    scores = [0.67, 0.66, 0.60, 0.30]  # the last is newest but answers far less well
    band = answering(scores, 0.85)
    assert band == [0, 1, 2]
    ids = [r.id for r in newest_first(rows, band, lambda r: r.date, 4)]
    assert ids == [2, 4, 1, 3]  # the newest that answers, the others, the older answers last
    assert [r.id for r in newest_first(rows, band, lambda r: r.date, 2)] == [2, 1]
    # A newer answer ranked below the k-th takes the k-th's place; the best is kept.
    assert [r.id for r in newest_first(rows, [0, 3], lambda r: r.date, 2)] == [4, 1]
    assert [r.id for r in newest_first(rows, [], lambda r: r.date, 2)] == [1, 2]
    assert answering([], 0.85) == [] and answering([0.0, 0.0], 0.85) == []
    # A newer article wording the same fact differently: all the best coverage, a lower cosine.
    assert answering_alike([0.70, 0.53, 0.34], [0.62, 0.62, 0.02]) == [0, 1]
    assert answering_alike([0.62, 0.60, 0.13], [0.56, 0.26, 0.87]) == [0, 1]
    assert answering_alike([], []) == []
    dated = by_date([_row(1, "2025-01-02"), _row(2, ""), _row(3, "2024-05-06")], lambda r: r.date)
    assert [r.id for r in dated] == [2, 3, 1]


class Recording(CannedGenerator):
    def stream(self, prompt, **kw) -> Iterator[str]:
        self.messages = prompt.messages
        yield from super().stream(prompt, **kw)


@pytest.fixture
def time_rag(tmp_path, real_embedder):
    def make(*answer: str, **settings) -> tuple[rag.RAG, Recording]:
        gen = Recording(answer or ("Samuel Achebe is chief executive [1].",))
        r = rag.RAG(
            rag.Settings(index=tmp_path / "index", **{"today": "2026-12-01", **settings}),
            embedder=real_embedder,
            generator=gen,
        )
        r.ingest([TIME_SET / "articles.jsonl"])
        return r, gen

    return make


def test_a_time_with_no_article_is_refused_with_the_reason(time_rag):
    r, gen = time_rag()
    answer = r.ask("What happened at the Port Carrow wind farm in 2021?")
    assert not answer.found and answer.support == "gate"
    assert answer.answer == "No article from 2021-01-01 to 2021-12-31."
    assert not hasattr(gen, "messages")  # the model was not asked
    assert r.ask("What happened to the ferries two days ago?").answer == "No article from 2026-11-29."
    # Off, the same question is searched over every article, as before.
    off = r.ask("What happened at the Port Carrow wind farm in 2021?", read_time=False)
    assert off.query_time is None and off.sources and off.sources[0].article_id.startswith("wind-")
    assert gen.messages[0]["content"] == P.SYSTEM and "Published" not in gen.messages[-1]["content"]


def test_what_happened_then_is_answered_from_the_articles_of_that_time(time_rag):
    r, gen = time_rag("Ferry services resumed on Monday [1].")
    answer = r.ask("What happened in Port Carrow yesterday?")
    assert [s.article_id for s in answer.sources] == ["ferry-2026-11-30"]
    assert answer.query_time is not None and answer.query_time.digest
    assert hasattr(gen, "messages")  # past the gate, to the model and the check after it
    assert answer.support != "gate"
    del gen.messages
    # Yesterday's one article does not name what this question is about: the gate decides.
    other = r.ask("What happened at the Northvale Energy board yesterday?")
    assert not other.found and other.support == "gate" and not hasattr(gen, "messages")


def test_the_range_filters_the_passages_and_the_model_is_told_dates(time_rag):
    r, gen = time_rag("Joseph Kiprop won [1].")
    answer = r.ask("Who won the Northvale marathon in 2024?")
    assert answer.query_time is not None and answer.query_time.label() == "2024-01-01 to 2024-12-31 (in 2024)"
    assert answer.sources and all(s.date.startswith("2024") for s in answer.sources)
    system, user = gen.messages[0]["content"], gen.messages[-1]["content"]
    assert "Today is 2026-12-01." in system and "the newest one that answers wins" in system
    assert "Published 13 October 2024 by Sports Wire." in user
    d = answer.to_dict()["query_time"]
    assert d["since"] == "2024-01-01" and d["until"] == "2024-12-31" and d["applied"]


def test_recency_prefers_the_newest_article_and_timelines_go_in_date_order(time_rag):
    r, gen = time_rag()
    answer = r.ask("Who is the current chief executive of Northvale Energy?")
    assert answer.sources[0].article_id == "nv-ceo-2026"
    # The canned answer cites [1]: the answer says how recent it is.
    assert answer.found and answer.answer.endswith("\n\n(As of 12 March 2026, the date of [1].)")
    assert len(answer.sources) <= 5
    del gen.messages
    timeline = r.ask("How did the Port Carrow wind farm project develop over time?")
    dates = [s.date for s in timeline.sources]
    assert dates == sorted(dates) and [s.n for s in timeline.sources] == list(range(1, len(dates) + 1))
    assert {s.article_id for s in timeline.sources} >= {"wind-2024-01", "wind-2024-09", "wind-2025-05"}
    assert "storm-2026-11-28" not in {s.article_id for s in timeline.sources}
    lines = timeline.answer.splitlines()
    assert lines[0].startswith("- 2024-01-18: ") and lines[0].endswith("[1].")
    assert len(lines) == len(dates) and all(s.cited for s in timeline.sources)
    assert timeline.found and timeline.support == "supported" and not hasattr(gen, "messages")


def test_undated_articles_are_not_filtered_by_a_questions_year(tmp_path, real_embedder):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "wimbledon.txt").write_text("Simona Halep won the women's singles title at Wimbledon in 2019.")
    gen = Recording(("Simona Halep won [1].",))
    r = rag.RAG(rag.Settings(index=tmp_path / "index"), embedder=real_embedder, generator=gen)
    r.ingest([docs])
    answer = r.ask("Who won the women's singles Wimbledon in 2019?")
    assert answer.found and answer.query_time is not None and not answer.query_time.applied
    assert answer.query_time.label().endswith("(not applied: no article is dated)")
    # Nothing dated: the prompt is the one the model always had.
    assert gen.messages[0]["content"] == P.SYSTEM and "Published" not in gen.messages[-1]["content"]


def test_the_time_set_is_well_formed_and_eval_reads_each_questions_today(time_rag):
    questions = load_questions(TIME_SET / "qa.jsonl")
    assert len(questions) >= 30 and {q.today for q in questions} == {"2026-12-01"}
    assert {q.kind for q in questions} == {"absolute", "relative", "recency", "timeline", "no-article"}
    assert sum(not q.answerable for q in questions) >= 10
    ids = {json.loads(line)["id"] for line in (TIME_SET / "articles.jsonl").read_text().splitlines()}
    assert len(ids) == 19
    r, _ = time_rag("The articles do not say.", today="")
    result = evaluate(r, [q for q in questions if q.kind == "no-article"], k=5)
    # Asked on the questions' own day, not the clock's: every one is refused.
    assert result["by_kind"]["no-article"]["refusal_accuracy"] == 1.0
    assert all(rec["query_time"]["today"] == "2026-12-01" for rec in result["records"])


@pytest.mark.slow
def test_real_model_answers_with_the_newest_article(tmp_path, real_embedder, real_generator):
    r = rag.RAG(
        rag.Settings(index=tmp_path / "index", today="2026-12-01"),
        embedder=real_embedder,
        generator=real_generator,
    )
    r.ingest([TIME_SET / "articles.jsonl"])
    now = r.ask("Who is the current chief executive of Northvale Energy?")
    assert now.found and "Achebe" in now.answer, now
    then = r.ask("Who became chief executive of Northvale Energy in 2023?")
    assert then.found and "Ortiz" in then.answer, then


def test_cli_says_how_it_read_the_time_and_names_a_bad_today(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "RAG_INDEX": str(tmp_path / "idx")}
    cmd = [sys.executable, "-m", "rag.cli"]
    subprocess.run(
        [*cmd, "ingest", str(TIME_SET / "articles.jsonl")], check=True, env=env, capture_output=True
    )
    question = "What happened at the Port Carrow wind farm in 2021?"
    p = subprocess.run(
        [*cmd, "ask", "--local", "--today", "2026-12-01", question], env=env, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("No article from 2021-01-01 to 2021-12-31.\n")
    assert "(time: 2021-01-01 to 2021-12-31 (in 2021); --no-time ignores it)" in p.stdout
    bad = subprocess.run(
        [*cmd, "ask", "--local", "--today", "someday", question], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert "today='someday' is not a date; write it as YYYY-MM-DD" in bad.stderr
