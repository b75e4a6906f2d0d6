"""Hostile and broken input: each bad file gets one line naming it, good files still load;
property tests on the chunker and loaders."""

from __future__ import annotations

import json
import resource
import shutil
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.chunking import chunk_text, split_sentences
from rag.errors import InputError, RagError
from rag.loaders import iter_articles
from rag.types import Article

from .conftest import FakeEmbedder


def load(*paths, **kw):
    items = list(iter_articles(paths, **kw))
    return [a for a in items if isinstance(a, Article)], [e for e in items if isinstance(e, InputError)]


BAD = Path(__file__).parent / "data" / "bad"


def test_bad_corpus_one_line_each(tmp_path):
    """The corpus of bad files in tests/data/bad/, plus what cannot live in a repository: a
    file over the size limit and a name with a control character; and a path through `..`."""
    d = tmp_path / "in"
    shutil.copytree(BAD, d)
    (d / "huge.txt").write_bytes(b"a" * (3 * 1024 * 1024))
    (d / "ctl\x07name.txt").write_text("Control character in the name.")
    arts, errs = load(d, str(d / ".." / "in" / "good.md"), max_file_mb=2)
    assert {a.text[:20] for a in arts} >= {
        "# Good\n\nA readable a",
        "first",
        "third",
        "Name with dots is st",
        "Control character in",
    }
    named = {e.path.rsplit("/", 1)[-1] for e in errs}
    assert named == {
        "zero.txt",
        "binary.md",
        "invalid.txt",
        "huge.txt",
        "mid.jsonl:2",
        "cols.csv",
        "scripts.html",
        "corrupt.pdf",
        "locked.pdf",
    }
    assert any("encrypted" in e.reason for e in errs)
    for e in errs:
        assert "\n" not in str(e) and e.path in str(e)


def test_big_jsonl_streams_with_bounded_memory(tmp_path):
    path = tmp_path / "big.jsonl"
    record = {"title": "T", "text": "x " * 1000}
    with open(path, "w") as f:
        for i in range(10_000):
            f.write(json.dumps({**record, "id": str(i)}) + "\n")
    assert path.stat().st_size > 20_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = 0
    for item in iter_articles([path], max_file_mb=50):
        assert isinstance(item, Article)
        n += 1
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert n == 10_000
    assert grown_mb < 15  # streamed line by line, never the whole 20 MB at once


TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=600)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT, max_tokens=st.integers(1, 40), overlap=st.integers(0, 40))
def test_chunk_offsets_always_point_at_their_text(text, max_tokens, overlap):
    fake = FakeEmbedder()
    chunks = chunk_text("a", text, fake.token_offsets, max_tokens=max_tokens, overlap=overlap)
    for c in chunks:
        assert text[c.start : c.end] == c.text and c.text.strip()
        assert len(fake.token_offsets(c.text)) <= max_tokens
    for s, e in split_sentences(text):
        assert 0 <= s < e <= len(text) and text[s:e].strip() == text[s:e]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(max_size=400), ext=st.sampled_from(["txt", "md", "html", "json", "jsonl", "csv", "pdf"])
)
def test_loaders_raise_only_their_own_errors(tmp_path_factory, data, ext):
    path = tmp_path_factory.mktemp("h") / f"f.{ext}"
    path.write_bytes(data)
    try:
        for item in iter_articles([path]):
            assert isinstance(item, (Article, InputError))
            if isinstance(item, Article):
                assert item.text and item.text == item.text.strip()
    except RagError:
        pass
