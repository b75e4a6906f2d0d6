"""Whole-article tasks: the request recognised, the articles chosen, the summary cited."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import rag
from rag import summary
from rag.generation import Prompt
from rag.store import terms

from .conftest import ROOT, SAMPLE, FakeEmbedder

INTENTS = ROOT / "tests" / "data" / "intents"
ARTICLES = ROOT / "tests" / "data" / "followups" / "articles.jsonl"
CITED = re.compile(r"^- .+ \[\d+\]$")


def _norm(subject: str) -> str:
    return subject.lower().removeprefix("the ").strip()


def test_requests_are_recognised_as_written():
    # The phrasing sets of docs/evaluation.md ("Whole-article tasks", "Comparing coverage"):
    # each line as written.
    lines = [x for f in sorted(INTENTS.glob("*.jsonl")) for x in f.read_text().splitlines() if x.strip()]
    assert len(lines) == 74
    for line in lines:
        case = json.loads(line)
        task = rag.recognise(case["text"])
        if case["task"] == "answer":
            assert task is None, case
            continue
        assert task is not None, case
        assert task.compare == (case["task"] == "comparison"), case
        if task.compare:
            # A comparison reads every article about its subject.
            assert (_norm(task.subject), task.several) == (_norm(case["subject"]), True), case
            continue
        assert (_norm(task.subject), task.several) == (_norm(case["subject"]), case["several"]), case
        if case.get("focus"):
            assert _norm(task.focus) == _norm(case["focus"])


def test_questions_are_not_taken_for_requests():
    # Every question of the follow-up and time sets is one to answer, not a summary to write.
    questions = [
        json.loads(line)["question"]
        for f in sorted((ROOT / "tests" / "data").glob("*/qa.jsonl"))
        for line in f.read_text().splitlines()
        if line.strip()
    ]
    assert len(questions) > 50
    assert [q for q in questions if rag.recognise(q)] == []


def _words(text: str) -> int:
    return len(text.split())


def test_parts_cut_at_chunk_boundaries_read_each_word_once():
    text = " ".join(f"w{i}" for i in range(100))
    # Chunks of 20 words overlapping by 5, as the chunker makes them.
    starts = [text.index(f"w{i} ") if i else 0 for i in range(0, 100, 15)]
    bounds = []
    for i in range(0, 100, 15):
        end_word = min(i + 20, 100)
        end = len(text) if end_word == 100 else text.index(f"w{end_word} ") - 1
        bounds.append((text.index(f"w{i}") if i else 0, end))
    assert len(starts) == len(bounds)
    runs = summary.parts(bounds, text, _words, budget=40)
    assert all(_words(r) <= 40 for r in runs)
    assert len(runs) > 1
    # Consecutive runs meet where one chunk ends and the next begins: overlap only, no gap.
    joined = " ".join(runs).split()
    assert set(joined) == set(text.split())
    assert summary.parts(bounds, text, _words, budget=1000) == [text]


def test_notes_batches_fit_their_budget():
    notes = ["a b c", "d e", "f g h i", "j"]
    groups = summary.batches(notes, _words, budget=6)
    assert [n for g in groups for n in g] == notes
    assert all(sum(_words(n) + 1 for n in g) <= 6 or len(g) == 1 for g in groups)


def test_a_point_is_held_by_the_passage_with_its_rare_words_and_all_its_numbers():
    passages = [
        "Putin said Russia could sell about 2 million tons of aluminum if sanctions are lifted.",
        "Kyiv seeks security guarantees from the US as part of any agreement.",
    ]

    def rarity(words):
        return {w: 1.0 for w in words}

    assert summary.held("Kyiv wants security guarantees from Washington", passages, rarity)[0] == 1
    i, share = summary.held("Russia could sell 2 million tons of aluminum", passages, rarity)
    assert i == 0 and share >= summary.HELD
    # A number no passage states: held by none, whatever else matches.
    assert summary.held("Russia could sell 5 million tons of aluminum", passages, rarity)[0] == -1
    assert summary.held("The Kremlin bought a football club", passages, rarity)[1] < summary.HELD


def test_a_section_s_point_is_the_first_sentence_of_the_reply():
    reply = "\nRussia offered aluminum. It also said more"
    assert summary.first_sentence(reply) == "Russia offered aluminum."
    assert summary.first_sentence("- Kyiv wants guarantees") == "- Kyiv wants guarantees"
    assert summary.first_sentence("") == ""


def test_bullet_lines_are_points_and_headings_are_not():
    assert summary.point_of("- Putin offered aluminum [2]") == "Putin offered aluminum"
    assert summary.point_of("2. **Kyiv** wants security guarantees.") == "Kyiv wants security guarantees."
    assert summary.point_of("Key points:") == ""
    assert summary.point_of("") == ""


class SummaryGenerator:
    """The model as a script for summaries: each section's call answers with the next of
    `points` (over again when they run out), a call combining notes with `combined`; every
    prompt is kept, and `n_ctx` can be made small."""

    def __init__(self, points: Sequence[str], combined: Sequence[str] = (), n_ctx: int = 4096) -> None:
        self.points = tuple(points)
        self.combined = tuple(combined)
        self.n_ctx = n_ctx
        self.prompts: list[str] = []
        self.sections = 0

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def format(self, messages: Sequence[dict[str, str]]) -> Prompt:
        return Prompt(
            tokens=range(sum(len(m["content"].split()) + 4 for m in messages)),
            stop=[],
            messages=tuple(messages),
        )

    def stream(self, prompt: Prompt, *, max_tokens: int, temperature: float, seed: int) -> Iterator[str]:
        content = prompt.messages[-1]["content"]
        self.prompts.append(content)
        if content.startswith("Notes:"):
            lines = [f"- {p}\n" for p in self.combined]
        else:
            lines = [self.points[self.sections % len(self.points)]] if self.points else []
            self.sections += 1
        for line in lines:
            # In pieces that cut lines anywhere, as a model's tokens do.
            yield line[:5]
            yield line[5:]


SAMPLE_POINTS = (
    "Putin said Russia could sell about 2 million tons of aluminum to the US if sanctions are lifted.",
    "Russia offered to work with American companies to mine rare earth minerals.",
    "The Kremlin bought a football club in Madrid.",
    "Kyiv seeks security guarantees from the US.",
)


def summary_rag(index: Path, generator: SummaryGenerator) -> rag.RAG:
    r = rag.RAG(rag.Settings(index=index), embedder=FakeEmbedder(), generator=generator)
    r._generator = generator
    return r


def test_an_article_is_read_in_sections_each_point_cited_and_unheld_points_dropped(tmp_path):
    gen = SummaryGenerator(SAMPLE_POINTS)
    r = summary_rag(tmp_path / "index", gen)
    r.ingest([SAMPLE])
    stream = r.stream("Summarize the article about rare earth metals.")
    chunks = len(stream.sources)
    pieces = list(stream)
    answer = stream.answer
    assert answer is not None and answer.task == "summary" and answer.found and answer.support == "supported"
    # One call per section, as many sections as passages up to the points a summary holds.
    assert gen.sections == len(gen.prompts) == min(chunks, summary.POINTS) == len(pieces)
    read = " ".join(gen.prompts)
    assert "Vladimir Putin confirmed" in read and "sharp focus" in read
    lines = answer.answer.splitlines()
    assert lines and all(CITED.match(x) for x in lines), lines
    assert "football" not in answer.answer
    # A point said twice is shown once.
    assert len(lines) == len(set(lines)) == 3
    # Each citation names the passage holding the point, and only cited passages are listed.
    by_n = {s.n: s for s in answer.sources}
    assert all(s.cited and s.evidence for s in answer.sources)
    for line in lines:
        n = rag.citations(line)[0]
        assert "aluminum" not in line or "aluminum" in by_n[n].text
        assert "Kyiv" not in line or "Kyiv seeks security guarantees" in by_n[n].text
    for s in answer.sources:
        assert all(e in s.text for e in s.evidence)


def test_a_summary_no_passage_holds_is_withdrawn(tmp_path):
    gen = SummaryGenerator(("The Kremlin bought a football club.", "Paris hosted the 1900 Olympics."))
    r = summary_rag(tmp_path / "index", gen)
    r.ingest([SAMPLE])
    stream = r.summarize()
    assert "".join(stream) == ""
    answer = stream.answer
    assert answer is not None and not answer.found and answer.outcome == "unsupported"
    assert "football" in answer.draft and "football" not in answer.answer
    assert answer.sources == ()


def test_what_the_article_says_about_a_focus_reads_the_passages_that_name_it(tmp_path):
    gen = SummaryGenerator(("Kyiv seeks security guarantees from the US.",))
    r = summary_rag(tmp_path / "index", gen)
    r.ingest([SAMPLE])
    answer = r.ask("What does the article say about Kyiv?")
    assert answer.task == "summary" and answer.found
    assert all("Kyiv" in p for p in gen.prompts) and all("says about Kyiv" in p for p in gen.prompts)


def _long_article(folder: Path) -> tuple[Path, str]:
    """One article made of the dated test articles: longer than a small context."""
    records = [json.loads(x) for x in ARTICLES.read_text().splitlines() if x.strip()]
    text = "\n".join(f"{d['title']}. {d['text']}" for d in records)
    path = folder / "review.jsonl"
    path.write_text(json.dumps({"id": "year-review", "title": "Northvale: the year in review", "text": text}))
    return path, text


def test_an_article_with_more_sections_than_points_is_combined_in_groups_until_it_fits(tmp_path):
    combined = ("Omar Haddad was elected mayor of Northvale.", "The central bank cut its rate to 3 percent.")
    points = tuple(json.loads(x)["title"] for x in ARTICLES.read_text().splitlines() if x.strip())
    # A context so small that a section is a passage or two, and the notes do not fit at once.
    gen = SummaryGenerator(points, combined, n_ctx=summary.TOKENS + summary.OVERHEAD + 60)
    r = summary_rag(tmp_path / "index", gen)
    path, text = _long_article(tmp_path)
    assert len(text.split()) > gen.n_ctx
    r.ingest([path])
    stream = r.summarize("year-review")
    statuses = [stream.status for _ in stream]
    answer = stream.answer
    assert answer is not None and answer.found
    sections = gen.sections
    assert sections > summary.POINTS
    assert statuses[:sections] == [summary.progress_text(i, sections) for i in range(1, sections + 1)]
    # More than one combining call: the notes were combined in groups first.
    combining = [p for p in gen.prompts if p.startswith("Notes:")]
    assert len(combining) >= 2
    # Every word of the article reached the model in some section, but for the sentences the
    # guard withheld (the fake embedder makes it see one).
    withheld = {w for x in r.article_sources(["year-review"]) for w in x.withheld}
    for w in withheld:
        text = text.replace(w, " ")
        assert all(w not in p for p in gen.prompts)
    read = set(terms([" ".join(p for p in gen.prompts if not p.startswith("Notes:"))])[0])
    assert set(terms([text])[0]) <= read
    assert [summary.point_of(x) for x in answer.answer.splitlines()] == [p.rstrip(".") for p in combined]


def test_the_articles_a_task_reads_are_chosen_by_its_subject(tmp_path):
    r = summary_rag(tmp_path / "index", SummaryGenerator(()))
    r.ingest([ARTICLES])
    ids, why, _ = r.task_articles(rag.Task("Port Carrow wind farm", several=True))
    assert why == "" and 2 <= len(ids) <= summary.MAX_ARTICLES
    assert all(i.startswith("wind-") for i in ids[:2]), ids
    ids, why, _ = r.task_articles(rag.Task("Omar Haddad elected mayor of Northvale"))
    assert ids == ["mayor-2025"]
    ids, why, _ = r.task_articles(rag.Task(""))
    assert ids == [] and "Which article?" in why
    ids, why, _ = r.task_articles(rag.Task("lattice quantum chromodynamics"))
    assert ids == [] and "lattice quantum chromodynamics" in why
    ids, why, _ = r.task_articles(rag.Task(""), rag.Filters(ids=("rate-2026-11",)))
    assert ids == ["rate-2026-11"]
    with pytest.raises(rag.ArticleNotFound, match="no article 'nope'"):
        r.task_articles(rag.Task(), ids=("nope",))


def test_a_request_in_a_chat_is_a_summary_turn_and_summarize_it_means_the_subject_before(tmp_path):
    gen = SummaryGenerator(("Omar Haddad was elected mayor of Northvale.",))
    r = summary_rag(tmp_path / "index", gen)
    r.ingest([ARTICLES])
    session = r.chat()
    first = session.ask("Who was elected mayor of Northvale in 2025?")
    assert first.task == "answer"
    second = session.ask("Summarize it.")
    assert second.task == "summary" and second.found
    assert {s.article_id for s in second.sources} == {"mayor-2025"}
    saved = r.chats.get(session.id)
    assert [t.record["task"] for t in saved.turns] == ["answer", "summary"]


def test_the_sample_summarised_by_the_real_model_holds_its_key_facts(tmp_path, real_embedder, real_generator):
    r = rag.RAG(rag.Settings(index=tmp_path / "index"), embedder=real_embedder, generator=real_generator)
    r.ingest([SAMPLE])
    answer = r.ask("Summarize the article.")
    assert answer.task == "summary" and answer.found, answer
    lines = answer.answer.splitlines()
    assert len(lines) >= 3 and all(CITED.match(x) for x in lines), lines
    text = answer.answer.lower()
    assert "alumin" in text and "rare earth" in text and "security guarantees" in text, text
    assert all(s.cited for s in answer.sources)


class SmallContext:
    """The real model, told it has a small context: long articles are read in parts."""

    def __init__(self, generator, n_ctx: int) -> None:
        self._generator = generator
        self.n_ctx = n_ctx

    def __getattr__(self, name: str):
        return getattr(self._generator, name)


def test_a_map_reduce_summary_by_the_real_model_of_an_article_longer_than_its_context(
    tmp_path, real_embedder, real_generator
):
    # Sections of about 160 tokens: more than a summary's points, so they are combined.
    small = SmallContext(real_generator, summary.TOKENS + summary.OVERHEAD + 160)
    r = rag.RAG(rag.Settings(index=tmp_path / "index"), embedder=real_embedder, generator=small)
    r._generator = small
    path, text = _long_article(tmp_path)
    assert real_generator.count_tokens(text) > small.n_ctx
    r.ingest([path])
    stream = r.summarize("year-review")
    seen = []
    for piece in stream:
        if not piece:
            seen.append(stream.status)
    answer = stream.answer
    assert answer is not None and answer.found, answer
    assert len(seen) > summary.POINTS and seen[-1] == summary.progress_text(len(seen), len(seen)), seen
    lines = answer.answer.splitlines()
    assert len(lines) >= 2 and all(CITED.match(x) for x in lines), lines
    assert answer.timings.prompt_tokens > small.n_ctx
