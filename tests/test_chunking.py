"""Chunks: sentence-aligned, offsets exact, never longer than the embedder reads."""

from __future__ import annotations

import itertools

from rag.chunking import chunk_text, split_sentences
from rag.ingest import chunk_article, embed_text
from rag.settings import Settings
from rag.types import Article

from .conftest import SAMPLE, FakeEmbedder


def test_sentences_keep_abbreviations_and_offsets():
    text = "Talks with U.S. officials began. Mr. Putin spoke.\nNew paragraph here! Done?"
    spans = split_sentences(text)
    assert [text[s:e] for s, e in spans] == [
        "Talks with U.S. officials began.",
        "Mr. Putin spoke.",
        "New paragraph here!",
        "Done?",
    ]


def test_offsets_point_at_text_and_overlap():
    fake = FakeEmbedder()
    text = " ".join(f"Sentence number {i} is here." for i in range(60))
    chunks = chunk_text("a", text, fake.token_offsets, max_tokens=30, overlap=8)
    assert len(chunks) > 5
    for c in chunks:
        assert text[c.start : c.end] == c.text
        assert len(fake.token_offsets(c.text)) <= 30
    # Consecutive chunks share their boundary sentence(s).
    assert all(b.start < a.end for a, b in itertools.pairwise(chunks))
    assert chunks[0].start == 0 and chunks[-1].end == len(text)


def test_overlong_sentence_is_cut_at_token_boundaries():
    fake = FakeEmbedder()
    text = "word " * 500
    chunks = chunk_text("a", text.strip(), fake.token_offsets, max_tokens=50, overlap=10)
    assert all(len(fake.token_offsets(c.text)) <= 50 for c in chunks)
    assert sum(len(fake.token_offsets(c.text)) for c in chunks) >= 500


def test_real_tokenizer_never_truncates(real_embedder):
    """What is embedded (title + chunk) fits all-MiniLM-L6-v2's 256 word pieces."""
    text = SAMPLE.read_text() + "\n" + ("Supercalifragilistic antidisestablishmentarianism " * 400)
    article = Article(
        id="x", text=text, title="A rather long title about rare earths, aluminium and more " * 3
    )
    settings = Settings(chunk_tokens=400, chunk_overlap=40)  # asks for more than the model reads
    chunks, title = chunk_article(article, real_embedder, settings)
    counts = real_embedder.count_tokens([embed_text(title, c.text) for c in chunks])
    assert max(counts) <= real_embedder.max_seq_length
    for c in chunks:
        assert text[c.start : c.end] == c.text


def test_evidence_runs_keep_the_evidence_and_one_neighbour_each_side():
    from rag.chunking import evidence_runs

    text = "One. Two. Three. Four. Five. Six. Seven."
    cut = lambda runs: [text[a:b] for a, b in runs]  # noqa: E731
    assert cut(evidence_runs(text, ["Four."])) == ["Three. Four. Five."]
    # Runs that touch are merged; ones that do not stay apart, in text order.
    assert cut(evidence_runs(text, ["Six.", "Two."])) == ["One. Two. Three.", "Five. Six. Seven."]
    assert cut(evidence_runs(text, ["Two.", "Four."])) == ["One. Two. Three. Four. Five."]
    assert cut(evidence_runs(text, ["Four."], neighbours=0)) == ["Four."]
    assert evidence_runs(text, ["Not in it."]) == [] and evidence_runs(text, []) == []
