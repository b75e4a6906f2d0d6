"""The index folder: generations, idempotent re-ingest, replace, remove, corruption, crashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rag import RAG
from rag.errors import EmbedderMismatch, IndexCorrupt, IndexNotFound
from rag.ingest import ingest, remove
from rag.settings import Settings
from rag.store import Snapshot, recover

from .conftest import ROOT, FakeEmbedder


def write_corpus(folder: Path, n: int = 3, version: str = "v1") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"a{i}.txt").write_text(
            " ".join(f"Article {i} {version} sentence {j} about harbour cranes." for j in range(20))
        )


def test_ingest_reingest_replace_remove(tmp_path, fake_embedder):
    s = Settings(index=tmp_path / "idx", chunk_tokens=40, chunk_overlap=8)
    write_corpus(tmp_path / "docs")
    r1 = ingest([tmp_path / "docs"], settings=s, embedder=fake_embedder)
    assert len(r1.added) == 3 and r1.chunks > 3 and r1.ok
    snap = Snapshot.open(s.index)
    assert snap.generation == "gen-000001" and len(snap) == r1.chunks
    built = snap.manifest["embedder"]
    assert {k: built[k] for k in ("name", "dimension", "max_seq_length", "backend")} == {
        "name": "fake",
        "dimension": 64,
        "max_seq_length": 64,
        "backend": "torch",
    }
    assert snap.manifest["chunking"]["chunk_tokens"] == 40
    assert [set(seg["files"]) for seg in snap.manifest["segments"]] == [{"vectors.faiss", "chunks.sqlite"}]

    r2 = ingest([tmp_path / "docs"], settings=s, embedder=fake_embedder)
    assert len(r2.unchanged) == 3 and r2.chunks == 0
    assert Snapshot.open(s.index).generation == "gen-000001"  # a no-op writes nothing

    (tmp_path / "docs" / "a1.txt").write_text("Completely new text for article one. Short now.")
    r3 = ingest([tmp_path / "docs"], settings=s, embedder=fake_embedder)
    assert len(r3.updated) == 1 and len(r3.unchanged) == 2
    snap = Snapshot.open(s.index)
    a1 = next(a for a in snap.articles() if a.id.endswith("a1.txt"))
    assert a1.chunks == 1
    assert len(snap) == sum(a.chunks for a in snap.articles())
    assert sorted(p.name for p in s.index.glob("gen-*")) == ["gen-000001", "gen-000002"]
    # The commit wrote a segment for the new version only; the old one stays, serving the
    # two articles that did not change.
    assert sorted(p.name for p in s.index.glob("seg-*")) == ["seg-000001", "seg-000002"]
    first, second = snap.manifest["segments"]
    assert first["name"] == "seg-000001" and first["deleted"] == [a1.id]
    assert second["counts"]["articles"] == 1 and second["deleted"] == []

    assert remove([a1.id, "nope"], settings=s) == ["nope"]
    snap = Snapshot.open(s.index)
    assert len(snap.articles()) == 2 and len(snap) == sum(a.chunks for a in snap.articles())
    # Only the live and the previous generation are kept.
    assert sorted(p.name for p in s.index.glob("gen-*")) == ["gen-000002", "gen-000003"]


def test_search_returns_chunk_text_from_offsets(tmp_path, fake_embedder):
    s = Settings(index=tmp_path / "idx", chunk_tokens=40, chunk_overlap=8)
    write_corpus(tmp_path / "docs")
    ingest([tmp_path / "docs"], settings=s, embedder=fake_embedder)
    snap = Snapshot.open(s.index)
    hits = snap.search(fake_embedder.encode_query("Article 2 sentence 15"), 3)
    rows = snap.chunks([i for i, _ in hits])
    assert rows and all(r.text in snap.article(r.article_id)[1] for r in rows)


def test_embedder_mismatch_and_missing_index(tmp_path, fake_embedder):
    s = Settings(index=tmp_path / "idx", chunk_tokens=40, chunk_overlap=8)
    with pytest.raises(IndexNotFound, match="rag ingest"):
        Snapshot.open(s.index)
    write_corpus(tmp_path / "docs", n=1)
    ingest([tmp_path / "docs"], settings=s, embedder=fake_embedder)
    other = FakeEmbedder(name="other", dimension=32)
    with pytest.raises(EmbedderMismatch, match="built with embedder 'fake'"):
        ingest([tmp_path / "docs"], settings=s, embedder=other)


class Shifted(FakeEmbedder):
    """Another backend whose vectors are not the ones the index holds."""

    def encode(self, texts, *, progress=None):
        return np.roll(super().encode(texts, progress=progress), 1, axis=1)


def test_another_backend_searches_an_index_only_when_its_vectors_agree(tmp_path, fake_embedder):
    s = Settings(index=tmp_path / "idx", chunk_tokens=40, chunk_overlap=8)
    write_corpus(tmp_path / "docs", n=2)
    ingest([tmp_path / "docs"], settings=s, embedder=fake_embedder)
    built = Snapshot.open(s.index).embedder
    assert built["backend"] == "torch" and len(built["probe"]["vectors"]) == len(built["probe"]["texts"]) > 3
    # Agreeing vectors: searched and added to, the index keeps the record of what made it,
    # and its probe is not computed again.
    same = FakeEmbedder(backend="openvino")
    same.probe = lambda: pytest.fail("the index's probe was computed again")
    RAG(s, embedder=same).retrieve("Article 1 sentence 3")
    write_corpus(tmp_path / "docs", n=3)
    ingest([tmp_path / "docs"], settings=s, embedder=same)
    assert Snapshot.open(s.index).embedder == built
    # Vectors that differ: refused at open, with the backend that made the index.
    with pytest.raises(
        EmbedderMismatch, match=r"embed backend 'torch'.*probe cosine .*--embed-backend torch"
    ):
        RAG(s, embedder=Shifted(backend="openvino")).retrieve("Article 1 sentence 3")
    with pytest.raises(EmbedderMismatch, match="--embed-backend torch"):
        ingest([tmp_path / "docs"], settings=s, embedder=Shifted(backend="openvino"))
    # The same backend is never probed (the record is the proof).
    RAG(s, embedder=Shifted()).retrieve("Article 1 sentence 3")
    # An index from before backends were recorded has no probe: only its own backend opens it.
    old = s.with_(index=tmp_path / "old")
    ingest([tmp_path / "docs"], settings=old, embedder=Unprobed())
    RAG(old, embedder=FakeEmbedder()).retrieve("Article 1 sentence 3")
    with pytest.raises(EmbedderMismatch, match=r"records no probe.*--embed-backend torch"):
        RAG(old, embedder=FakeEmbedder(backend="openvino")).retrieve("Article 1 sentence 3")


class Unprobed(FakeEmbedder):
    def probe(self):
        return {}


def victim_path(index: Path, victim: str) -> Path:
    """The pointer, the second generation's manifest, or a file of the segment it added."""
    if victim == "CURRENT":
        return index / victim
    if victim == "manifest.json":
        return index / "gen-000002" / victim
    added = json.loads((index / "gen-000002" / "manifest.json").read_text())["segments"][-1]["name"]
    return index / added / victim


@pytest.mark.parametrize("victim", ["vectors.faiss", "chunks.sqlite", "manifest.json", "CURRENT"])
def test_corruption_is_refused_and_recoverable(tmp_path, fake_embedder, victim):
    s = Settings(index=tmp_path / "idx", chunk_tokens=40, chunk_overlap=8)
    write_corpus(tmp_path / "docs", n=2)
    ingest([tmp_path / "docs"], settings=s, embedder=fake_embedder)
    write_corpus(tmp_path / "docs", n=3, version="v2")
    ingest([tmp_path / "docs"], settings=s, embedder=fake_embedder)
    path = victim_path(s.index, victim)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexCorrupt, match="rag recover"):
        Snapshot.open(s.index)
    gen = recover(s.index)
    assert gen in ("gen-000001", "gen-000002")
    assert len(Snapshot.open(s.index).articles()) in (2, 3)


def test_truncation_is_refused_and_recoverable(tmp_path, fake_embedder, capsys):
    """Each file of the index cut to half its length and to nothing (a full disk, a copy
    interrupted, a crash of a careless backup tool): opening refuses it with the way out,
    nothing is answered from it, and `recover` brings back the newest intact generation,
    with its own content."""
    victims = ["vectors.faiss", "chunks.sqlite", "manifest.json", "CURRENT"]
    tried = refused = recovered = 0
    for victim in victims:
        for cut in ("half", "zero"):
            base = tmp_path / f"{victim}-{cut}"
            s = Settings(index=base / "idx", chunk_tokens=40, chunk_overlap=8)
            write_corpus(base / "docs", n=2)
            ingest([base / "docs"], settings=s, embedder=fake_embedder)
            write_corpus(base / "docs", n=3, version="v2")
            ingest([base / "docs"], settings=s, embedder=fake_embedder)
            path = victim_path(s.index, victim)
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2] if cut == "half" else b"")
            tried += 1
            with pytest.raises(IndexCorrupt) as refusal:
                Snapshot.open(s.index)
            message = str(refusal.value)
            assert f"rag recover --index {s.index}" in message, (victim, cut, message)
            assert f"rag ingest --rebuild --index {s.index}" in message, (victim, cut, message)
            assert victim in message, message  # names the damaged file
            # Nothing reaches a reader either: a question is refused, not answered from it.
            r = RAG(s, embedder=fake_embedder)
            with pytest.raises(IndexCorrupt):
                r.retrieve("harbour cranes")
            refused += 1

            gen = recover(s.index)
            # A damaged generation falls back to the one before it; a damaged pointer only
            # needs re-pointing at the last commit, which is intact.
            expected, version, n = ("gen-000002", "v2", 3) if victim == "CURRENT" else ("gen-000001", "v1", 2)
            assert gen == expected, (victim, cut)
            snap = Snapshot.open(s.index)
            assert snap.generation == expected
            articles = snap.articles()
            assert len(articles) == n
            assert len(snap) == sum(a.chunks for a in articles)
            assert all(f" {version} " in snap.article(a.id)[1] for a in articles)
            assert RAG(s, embedder=fake_embedder).retrieve("harbour cranes")
            snap.close()
            recovered += 1
    with capsys.disabled():
        print(f"\ntruncations tried {tried}, refused {refused}, recovered {recovered}")
    assert tried == refused == recovered == 2 * len(victims)


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    import rag.store.files as store
    from conftest import FakeEmbedder
    from rag.ingest import ingest
    from rag.settings import Settings

    where = sys.argv[1]
    real_durable, real_fsync = store._write_durably, store._fsync
    calls = {{"fsync": 0}}

    def durable(path, data):
        if where == "pointer" and path.name == "CURRENT":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_durable(path, data)

    def fsync(path):
        calls["fsync"] += 1
        if where == "files" and calls["fsync"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_fsync(path)

    store._write_durably, store._fsync = durable, fsync
    s = Settings(index=sys.argv[2], chunk_tokens=40, chunk_overlap=8)
    ingest([sys.argv[3]], settings=s, embedder=FakeEmbedder())
    """
)


@pytest.mark.parametrize("where", ["files", "pointer"])
def test_kill_during_commit_leaves_last_generation(tmp_path, fake_embedder, where):
    s = Settings(index=tmp_path / "idx", chunk_tokens=40, chunk_overlap=8)
    write_corpus(tmp_path / "docs", n=2)
    ingest([tmp_path / "docs"], settings=s, embedder=fake_embedder)
    before = {a.id: a.chunks for a in Snapshot.open(s.index).articles()}
    write_corpus(tmp_path / "docs", n=4, version="v2")
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=str(ROOT), tests=str(ROOT / "tests")))
    proc = subprocess.run(
        [sys.executable, str(script), where, str(s.index), str(tmp_path / "docs")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    snap = Snapshot.open(s.index)
    assert snap.generation == "gen-000001"
    assert {a.id: a.chunks for a in snap.articles()} == before
    assert len(snap) == sum(before.values())
    # The next ingest cleans up and commits normally.
    r = ingest([tmp_path / "docs"], settings=s, embedder=fake_embedder)
    assert len(r.added) == 2 and len(r.updated) == 2
    assert len(Snapshot.open(s.index).articles()) == 4


def test_cli_ingest_list_stats_remove(tmp_path, monkeypatch):
    """The CLI verbs, run as a user would, on the real embedder."""
    docs = tmp_path / "docs"
    write_corpus(docs, n=2)
    (docs / "bad.jsonl").write_text('{"text": "fine record"}\n{broken\n')
    env = {**os.environ, "RAG_INDEX": str(tmp_path / "idx")}
    rag = [sys.executable, "-m", "rag.cli"]
    p = subprocess.run([*rag, "ingest", str(docs)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 1, p.stderr
    assert "bad.jsonl:2: malformed JSON" in p.stderr
    assert "3 added" in p.stdout
    p = subprocess.run([*rag, "list", "--json"], capture_output=True, text=True, env=env, check=True)
    ids = [json.loads(line)["id"] for line in p.stdout.splitlines()]
    assert len(ids) == 3
    p = subprocess.run([*rag, "stats", "--json"], capture_output=True, text=True, env=env, check=True)
    assert json.loads(p.stdout)["articles"] == 3
    p = subprocess.run([*rag, "remove", ids[0]], capture_output=True, text=True, env=env)
    assert p.returncode == 0 and "removed 1" in p.stdout
    p = subprocess.run([*rag, "remove", "no-such-id"], capture_output=True, text=True, env=env)
    assert p.returncode == 1 and "no article with id 'no-such-id'" in p.stderr


def test_keyword_search_over_segments_ranks_as_one_index(tmp_path, fake_embedder):
    """The same articles committed at once (one segment: FTS5's own BM25) and over several
    commits with a removal and a replacement (several segments, some rows dead): the keyword
    search gives the same passages with the same scores, and the same term frequencies."""
    from rag.ingest import ingest_articles
    from rag.types import Article

    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(60)] + ["harbour", "cranes", "strike", "port", "ferry"]

    def art(i: int, version: int = 0) -> Article:
        text = " ".join(rng.choice(words, 30 + i % 9)) + f". Version {version}."
        return Article(id=f"n{i}", text=text, title=f"Story {i} ferry" if i % 3 else f"Story {i}")

    final = {i: art(i) for i in range(40)}
    replaced = art(7, version=1)
    s_one = Settings(index=tmp_path / "one", chunk_tokens=20, chunk_overlap=4, dedup_threshold=0)
    s_many = s_one.with_(index=tmp_path / "many")
    for batch in (range(0, 12), range(12, 25), range(25, 40)):
        ingest_articles([final[i] for i in batch], settings=s_many, embedder=fake_embedder)
    ingest_articles([replaced, art(99)], settings=s_many, embedder=fake_embedder)
    remove(["n99"], settings=s_many)
    final[7] = replaced
    ingest_articles(list(final.values()), settings=s_one, embedder=fake_embedder)
    one, many = Snapshot.open(s_one.index), Snapshot.open(s_many.index)
    assert len(one.segments) == 1 and len(many.segments) >= 3 and any(x.deleted for x in many.segments)
    assert len(one) == len(many)

    def keyed(snap: Snapshot, hits: list[tuple[int, float]]) -> list[tuple[str, int, float]]:
        rows = {r.id: r for r in snap.chunks([i for i, _ in hits])}
        return [(rows[i].article_id, rows[i].ordinal, round(x, 9)) for i, x in hits]

    def ranked(hits: list[tuple[str, int, float]]) -> list[tuple[str, int, float]]:
        # Equal scores are ordered by chunk id, which the two indexes number differently.
        return sorted(hits, key=lambda h: (-h[2], h[0], h[1]))

    for query in ("harbour cranes", "ferry strike w3", "w10 w11 w12 port", "story version"):
        everything = ranked(keyed(one, one.keyword_search(query, 500)))
        assert everything and ranked(keyed(many, many.keyword_search(query, 500))) == everything
        top = keyed(many, many.keyword_search(query, 5))
        assert [h[2] for h in top] == [h[2] for h in everything[:5]]
    some = ["harbour", "ferri", "w3", "version", "stori"]
    assert many.document_frequencies(some) == one.document_frequencies(some)


def test_an_index_from_before_segments_is_read_added_to_and_compacted(tmp_path, fake_embedder):
    """tests/data/index-v1 was written by the store before segments (format 1: the files in
    the generation folder): it opens as one segment, takes new articles and a replacement
    without being rewritten, keeps its copies, and `compact` folds it into a segment."""
    import shutil

    from rag.ingest import ingest_articles
    from rag.store import compact
    from rag.types import Article

    index = tmp_path / "idx"
    shutil.copytree(ROOT / "tests" / "data" / "index-v1", index)
    s = Settings(index=index, chunk_tokens=40, chunk_overlap=8)
    snap = Snapshot.open(index)
    assert snap.manifest["format_version"] == 1 and [seg.name for seg in snap.segments] == ["gen-000002"]
    assert [a.id for a in snap.articles()] == ["old0", "old1", "old2"]
    assert [c.article_id for c in snap.copies_of(["old0"])["old0"]] == ["copy0"]
    hits = RAG(s, embedder=fake_embedder).retrieve("Old article 1 sentence 3 harbour cranes")
    assert hits and hits[0].article_id == "old1"
    before = (index / "gen-000002" / "chunks.sqlite").read_bytes()

    new = Article(id="new0", title="New story", text="A new article about the lighthouse keeper. " * 12)
    changed = Article(id="old1", title="Old story 1", text="Old story one, rewritten this time. " * 12)
    ingest_articles([new, changed], settings=s, embedder=fake_embedder)
    snap = Snapshot.open(index)
    assert snap.manifest["format_version"] == 2
    assert [seg.name for seg in snap.segments] == ["gen-000002", "seg-000001"]
    assert snap.segments[0].deleted == {"old1"}
    assert (index / "gen-000002" / "chunks.sqlite").read_bytes() == before  # not rewritten
    assert sorted(a.id for a in snap.articles()) == ["new0", "old0", "old1", "old2"]
    assert "rewritten" in snap.article("old1")[1]
    assert snap.copies_of(["old0"])["old0"][0].article_id == "copy0"
    assert len(snap) == sum(a.chunks for a in snap.articles())

    assert compact(index, everything=True) is not None
    snap = Snapshot.open(index)
    assert [seg.name for seg in snap.segments] == ["seg-000002"] and not snap.segments[0].deleted
    assert sorted(a.id for a in snap.articles()) == ["new0", "old0", "old1", "old2"]
    assert snap.copies_of(["old0"])["old0"][0].article_id == "copy0"
    assert len(snap) == sum(a.chunks for a in snap.articles())
    hits = RAG(s, embedder=fake_embedder).retrieve("lighthouse keeper")
    assert hits and hits[0].article_id == "new0"


def test_small_segments_fold_as_they_pile_up_and_rag_compact_folds_the_rest(tmp_path, fake_embedder):
    """Each commit of one article adds a segment; at `MERGE_AT` small segments a commit folds
    them (the live rows only); `rag compact` folds every segment but the largest, `--all`
    everything; nothing is lost and searches find the same passages."""
    from click.testing import CliRunner

    from rag.cli import cli
    from rag.ingest import ingest_articles
    from rag.store.transaction import MERGE_AT
    from rag.types import Article

    s = Settings(index=tmp_path / "idx", chunk_tokens=40, chunk_overlap=8, dedup_threshold=0)

    def art(i: int) -> Article:
        return Article(id=f"s{i}", title=f"Story {i}", text=f"Story {i} is about topic{i} and more. " * 8)

    counts = []
    for i in range(MERGE_AT + 3):
        ingest_articles([art(i)], settings=s, embedder=fake_embedder)
        counts.append(len(Snapshot.open(s.index).segments))
    assert counts[: MERGE_AT - 1] == list(range(1, MERGE_AT))
    assert counts[MERGE_AT - 1] == 1  # the eighth small segment: all eight folded into one
    assert counts[-1] == 4
    remove(["s2"], settings=s)
    snap = Snapshot.open(s.index)
    assert sorted(a.id for a in snap.articles()) == sorted(f"s{i}" for i in range(MERGE_AT + 3) if i != 2)
    before = {q: RAG(s, embedder=fake_embedder).retrieve(q, k=3)[0].article_id for q in ("topic5", "topic9")}

    runner = CliRunner()
    out = runner.invoke(cli, ["stats", "--index", str(s.index)])
    assert out.exit_code == 0 and "segments     4 (live/stored chunks:" in out.output, out.output
    out = runner.invoke(cli, ["compact", "--index", str(s.index)])
    assert out.exit_code == 0 and "4 segment(s) folded into 2" in out.output, out.output
    out = runner.invoke(cli, ["compact", "--all", "--index", str(s.index)])
    assert out.exit_code == 0 and "2 segment(s) folded into 1" in out.output, out.output
    snap = Snapshot.open(s.index)
    assert len(snap.segments) == 1 and not snap.segments[0].deleted
    assert len(snap.articles()) == MERGE_AT + 2 and len(snap) == sum(a.chunks for a in snap.articles())
    out = runner.invoke(cli, ["compact", "--all", "--index", str(s.index)])
    assert out.exit_code == 0 and "nothing to fold" in out.output
    after = {q: RAG(s, embedder=fake_embedder).retrieve(q, k=3)[0].article_id for q in ("topic5", "topic9")}
    assert after == before == {"topic5": "s5", "topic9": "s9"}
    # Only what the live and the previous generation use is on disk.
    live = Snapshot.open(s.index).manifest
    assert {p.name for p in s.index.glob("seg-*")} <= {r["name"] for r in live["segments"]} | {
        r["name"]
        for r in json.loads((s.index / f"gen-{live['generation'] - 1:06d}" / "manifest.json").read_text())[
            "segments"
        ]
    }


def test_a_reader_keeps_the_vectors_it_loaded_when_a_commit_keeps_their_segment(tmp_path, fake_embedder):
    """A server switching to a new generation does not read a kept segment's vectors again."""
    s = Settings(index=tmp_path / "idx", chunk_tokens=40, chunk_overlap=8)
    write_corpus(tmp_path / "docs", n=2)
    r = RAG(s, embedder=fake_embedder)
    r.ingest([tmp_path / "docs"])
    assert r.retrieve("harbour cranes")
    loaded = r.snapshot().segments[0].index
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "b.txt").write_text("A story about lighthouse keepers. " * 10)
    r.ingest([tmp_path / "more"])
    snap = r.snapshot()
    assert [seg.name for seg in snap.segments] == ["seg-000001", "seg-000002"]
    assert snap.segments[0].index is loaded
    assert r.retrieve("lighthouse keepers")[0].article_id.endswith("b.txt")


def test_a_rebuild_never_writes_over_a_segment_the_kept_generations_list(tmp_path, fake_embedder):
    """`--rebuild` starts an index anew beside the live one: the live generation (kept as the
    previous one) stays intact, so a crash or `rag recover` can still go back to it."""
    from rag.store.files import verify_generation

    s = Settings(index=tmp_path / "idx", chunk_tokens=40, chunk_overlap=8)
    write_corpus(tmp_path / "docs", n=2)
    ingest([tmp_path / "docs"], settings=s, embedder=fake_embedder)
    ingest([tmp_path / "docs"], settings=s, embedder=fake_embedder, rebuild=True)
    snap = Snapshot.open(s.index)
    assert snap.generation == "gen-000002" and [x.name for x in snap.segments] == ["seg-000002"]
    verify_generation(s.index, "gen-000001", None, whole=True)  # still intact
    assert len(Snapshot.open(s.index).articles()) == 2


def test_a_reader_of_an_older_generation_still_searches_after_its_segments_are_removed(
    tmp_path, fake_embedder
):
    """Clean-up after two commits removes what an older snapshot lists; a reader holding it
    (a question under way in a server) still reads its vectors: the files stay open."""
    s = Settings(index=tmp_path / "idx", chunk_tokens=40, chunk_overlap=8)
    write_corpus(tmp_path / "docs", n=2)
    ingest([tmp_path / "docs"], settings=s, embedder=fake_embedder)
    old = Snapshot.open(s.index)  # nothing loaded yet
    for version in ("v2", "v3"):
        write_corpus(tmp_path / "docs", n=2, version=version)
        ingest([tmp_path / "docs"], settings=s, embedder=fake_embedder)
    assert not (s.index / old.segments[0].name).exists()
    hits = old.search(fake_embedder.encode_query("Article 1 v1 sentence 3"), 3)
    assert hits and all(" v1 " in r.text for r in old.chunks([i for i, _ in hits]))


def test_clean_up_removes_nothing_when_a_kept_manifest_cannot_be_read(tmp_path, fake_embedder, monkeypatch):
    from rag.store import files

    s = Settings(index=tmp_path / "idx", chunk_tokens=40, chunk_overlap=8)
    write_corpus(tmp_path / "docs", n=2)
    ingest([tmp_path / "docs"], settings=s, embedder=fake_embedder)
    before = sorted(p.name for p in s.index.iterdir())

    def unreadable(root, gen):
        raise OSError("too many open files")

    monkeypatch.setattr(files, "read_manifest", unreadable)
    files.collect_garbage(s.index, ["gen-000001"])
    assert sorted(p.name for p in s.index.iterdir()) == before


def test_large_segments_fold_by_tier_so_bulk_loads_leave_few(tmp_path, fake_embedder, monkeypatch):
    """Large commits (each its own IVF segment) fold by size tier: the fourth of a tier folds
    its tier, cascading when the fold fills the next; small commits never rewrite large
    segments; every article stays, and search finds each vector's own chunk first."""
    from rag.bench.commit import _articles
    from rag.store import Transaction, transaction
    from rag.types import Article, Chunk

    monkeypatch.setattr(transaction, "MERGE_BUDGET", 100)
    index = tmp_path / "idx"
    record = {"name": fake_embedder.name, "dimension": fake_embedder.dimension}
    chunking = {"chunk_tokens": 128, "chunk_overlap": 16}

    def commit(articles: list[tuple[Article, list[Chunk]]]) -> list[int]:
        tx = Transaction(index, embedder=record, chunking=chunking, ann_threshold=200)
        for article, chunks in articles:
            tx.put(article, chunks, fake_embedder.encode([c.text for c in chunks]))
        tx.commit()
        snap = Snapshot.open(index)
        rows = sorted((seg.rows for seg in snap.segments), reverse=True)
        snap.close()
        return rows

    sizes = [commit(list(_articles(320, i, prefix=f"c{i}-"))) for i in range(20)]
    # 4 x 320 -> 1,280 (tier 1); the fourth 1,280 cascades: 4 x 1,280 -> 5,120 (tier 2).
    assert [len(r) for r in sizes] == [1, 2, 3, 1, 2, 3, 4, 2, 3, 4, 5, 3, 4, 5, 6, 1, 2, 3, 4, 2]
    assert sizes[-1] == [5120, 1280]
    snap = Snapshot.open(index)
    assert all(seg.index_type != "flat" for seg in snap.segments)
    assert len(snap) == 6400 and len(snap.articles()) == 800
    ids = snap.chunk_ids()
    probe = np.array(ids[:: len(ids) // 25])
    for chunk_id, vector in zip(probe, snap.vectors(probe), strict=True):
        assert snap.search(vector, 5)[0][0] == chunk_id
    snap.close()

    # A small commit beside them adds a segment and rewrites no large one.
    text = "A small late report."
    assert commit([(Article(id="late", text=text), [Chunk("late", 0, 0, len(text), text)])]) == [
        5120,
        1280,
        1,
    ]


def test_a_large_segment_shares_the_index_quantizer_only_when_it_fits_and_partitions_well(tmp_path):
    """A segment past `ann_threshold` reuses the index's trained quantizer when it is no
    larger than what that was trained on, the sharers stay within SHARE_SLACK of it, and its
    own vectors are found as well on it (same topics); else it trains its own."""
    from rag.bench.commit import _articles
    from rag.store import Transaction

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((16, 32)).astype(np.float32)

    def topical(n: int) -> np.ndarray:
        x = centres[rng.integers(0, 16, n)] + 0.15 * rng.standard_normal((n, 32)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def scattered(n: int) -> np.ndarray:
        x = rng.standard_normal((n, 32)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def commit(index: Path, vectors: np.ndarray, tag: str) -> list[str | None]:
        tx = Transaction(
            index,
            embedder={"name": "test", "dimension": 32},
            chunking={"chunk_tokens": 128},
            ann_threshold=200,
        )
        pos = 0
        for article, chunks in _articles(len(vectors), 1, prefix=tag):
            tx.put(article, chunks, vectors[pos : pos + len(chunks)])
            pos += len(chunks)
        tx.commit()
        snap = Snapshot.open(index)
        keys = [seg.coarse for seg in snap.segments]
        snap.close()
        return keys

    index = tmp_path / "idx"
    first = commit(index, topical(1600), "a")
    assert len(first) == 1 and first[0] is not None
    # 1,600 trained on; 1,600 + 800 <= 1.5 x 1,600: shared.
    assert commit(index, topical(800), "b") == [first[0], first[0]]
    # 2,400 + 240 past 1.5x: its own quantizer.
    keys = commit(index, topical(240), "c")
    assert keys[:2] == [first[0], first[0]] and keys[2] not in (None, first[0])

    other = tmp_path / "other"
    base = commit(other, topical(1600), "a")
    # Fits by size, but vectors of no topic the quantizer knows: its own quantizer.
    keys = commit(other, scattered(800), "s")
    assert keys[0] == base[0] and keys[1] not in (None, base[0])
