"""The two stores, FAISS (the index folder) and Qdrant (local mode here: the same client code
as against a server), through the same calls: ingest, re-ingest, replace, remove, search,
keyword search, filters, syndicated copies, feed state, refusal, evaluation; a commit that
fails half-way; moving an index from one store to the other and back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import rag
from rag.cli import cli
from rag.filters import Filters
from rag.ingest import ingest_articles, remove
from rag.store import begin, open_index, store_of, terms
from rag.types import Article

from .test_api import CannedGenerator

STORES = ["faiss", "qdrant"]

STORY = (
    "The harbour authority approved a new ferry terminal on Tuesday. The terminal will cost "
    "84 million euros and open in 2028, the port's director Lena Brandt said. Ferry operators "
    "welcomed the plan, which doubles the number of berths. "
)


def articles() -> list[Article]:
    out = [
        Article(
            id="ferry",
            title="Harbour approves ferry terminal",
            text=STORY * 3,
            date="2026-03-02",
            source="Harbour Ledger",
            author="Mara Lind",
        ),
        Article(
            id="comet",
            title="Amateur finds a comet",
            text="A retired teacher discovered a comet with a backyard telescope. " * 8,
            date="2026-05-20",
            source="Sky News Desk",
            author="Ines Duarte",
        ),
        Article(
            id="budget",
            title="Council passes budget",
            text="The council passed a budget of 412 million for schools and roads after a long debate. " * 6,
            date="2025-11-11",
            source="City Wire Östra",
            author="Tomas Berg",
        ),
    ]
    return out


@pytest.fixture(params=STORES)
def store(request) -> str:
    return request.param


def settings_for(tmp_path, store: str) -> rag.Settings:
    return rag.Settings(index=tmp_path / "idx", chunk_tokens=40, chunk_overlap=8, store=store)


def test_ingest_replace_remove_search_and_filters(tmp_path, store, fake_embedder):
    s = settings_for(tmp_path, store)
    r1 = ingest_articles(articles(), settings=s, embedder=fake_embedder)
    assert len(r1.added) == 3 and r1.chunks > 3
    assert store_of(s.index) == store
    snap = open_index(s.index)
    assert sorted(a.id for a in snap.articles()) == ["budget", "comet", "ferry"]
    assert len(snap) == sum(a.chunks for a in snap.articles()) == snap.manifest["counts"]["chunks"]

    # Re-ingest: nothing to do; replace one; remove one.
    assert len(ingest_articles(articles(), settings=s, embedder=fake_embedder).unchanged) == 3
    changed = Article(
        id="comet", title="Amateur finds two comets", text="Two comets were found by a teacher. " * 8
    )
    assert ingest_articles([changed], settings=s, embedder=fake_embedder).updated == ("comet",)
    assert remove(["budget", "nope"], settings=s) == ["nope"]
    snap = open_index(s.index)
    assert sorted(a.id for a in snap.articles()) == ["comet", "ferry"]
    assert "Two comets" in snap.article("comet")[1] and snap.article("budget") is None
    assert len(snap) == sum(a.chunks for a in snap.articles()) == len(snap.chunk_ids())

    # Vectors and keywords find the passage; its text comes from its offsets.
    q = "How much will the ferry terminal cost?"
    hits = snap.search(fake_embedder.encode_query(q), 3)
    rows = snap.chunks([i for i, _ in hits])
    assert rows[0].article_id == "ferry" and rows[0].text in snap.article("ferry")[1]
    assert snap.chunks([hits[0][0]])[0].text == rows[0].text
    words = snap.keyword_search("terminal euros", 5)
    assert words and all(r.article_id == "ferry" for r in snap.chunks([i for i, _ in words]))
    assert snap.keyword_search("budget", 5) == []  # removed: not found any more
    np.testing.assert_allclose(
        snap.vectors([hits[0][0]])[0] @ fake_embedder.encode_query(q), hits[0][1], atol=1e-3
    )
    terminal, comet, budget = terms(["terminal comet budget"])[0]  # as the keyword index has them
    df = snap.document_frequencies([terminal, comet, budget])
    assert df[terminal] > 0 and df[comet] > 0 and df[budget] == 0

    # Filters: the same ids as filtering everything by hand.
    ingest_articles(articles()[2:], settings=s, embedder=fake_embedder)
    snap = open_index(s.index)
    every = {r.id: r for r in snap.chunks(snap.chunk_ids())}
    chosen = []
    for flt, expected, fields in (
        (Filters(source="harbour ledger"), {"ferry"}, {"source_key"}),
        (Filters(author="berg"), {"budget"}, {"article_id"}),  # a byline matches anywhere
        (Filters(since="2026-01-01"), {"ferry"}, {"day"}),  # the comet's new version has no date
        (Filters(ids=("comet", "budget")), {"comet", "budget"}, {"article_id"}),
        (Filters(source="CITY WIRE ÖSTRA"), {"budget"}, {"source_key"}),  # past ASCII too
        (Filters(until="2025-12-31"), {"budget"}, {"day"}),
    ):
        got = snap.filter_chunks(flt)
        assert {every[i].article_id for i in got} == expected, flt
        assert sorted(got) == sorted(i for i, row in every.items() if row.article_id in expected)
        allowed = snap.search(fake_embedder.encode_query(q), 5, allowed=got)
        assert {every[i].article_id for i, _ in allowed} <= expected
        assert {
            every[i].article_id for i, _ in snap.keyword_search("terminal comet budget", 9, allowed=got)
        } <= expected
        if store == "qdrant":
            # Payload conditions on the chunk search, not a list of point ids: sources and
            # dates on the chunks' own fields; the same chunks on an index written before
            # chunks carried them (every filter then resolved to article ids).
            assert {getattr(m, "key", None) for m in got.must} == fields, flt
            assert len(got) == len(list(got))
            chosen.append((flt, sorted(got)))
    assert snap.dated()
    if store == "qdrant":
        # An index written before chunks carried `source_key` and `day`: every filter is
        # resolved to the articles it selects, with the same chunks.
        c = snap.where
        c.client.delete_payload(c.chunks, keys=["source_key", "day"], points=snap.chunk_ids())
        older = open_index(s.index)
        older.meta_point = {k: v for k, v in older.meta_point.items() if k != "filter_fields"}
        for flt, ids in chosen:
            got = older.filter_chunks(flt)
            assert {getattr(m, "key", None) for m in got.must} == {"article_id"} and sorted(got) == ids, flt


def test_copies_feed_state_and_the_pipeline_answer_alike(tmp_path, store, fake_embedder):
    s = settings_for(tmp_path, store).with_(dedup_threshold=0.5)
    ingest_articles(articles(), settings=s, embedder=fake_embedder)
    reprint = Article(
        id="ferry-reprint", title="Ferry terminal approved", text=STORY * 3, source="Coast Times"
    )
    report = ingest_articles([reprint], settings=s, embedder=fake_embedder)
    assert report.copies == (("ferry-reprint", "ferry"),)
    snap = open_index(s.index)
    assert [c.source for c in snap.copies_of(["ferry"])["ferry"]] == ["Coast Times"]
    assert next(a for a in snap.articles() if a.id == "ferry").copies == 1
    # Removing the original indexes its copy in its place.
    remove(["ferry"], settings=s, embedder=lambda: fake_embedder)
    snap = open_index(s.index)
    assert "ferry-reprint" in {a.id for a in snap.articles()} and snap.copies_of(["ferry"]) == {}

    tx = begin(s.index, embedder=snap.embedder, chunking=snap.manifest["chunking"])
    tx.set_meta("feed:https://example.org/rss", json.dumps({"etag": "x1"}))
    tx.commit()
    assert json.loads(open_index(s.index).meta("feed:https://example.org/rss")) == {"etag": "x1"}

    r = rag.RAG(
        s, embedder=fake_embedder, generator=CannedGenerator(["The terminal will cost 84 million euros [1]."])
    )
    answer = r.ask("How much will the ferry terminal cost?")
    assert answer.sources and answer.sources[0].article_id == "ferry-reprint"
    assert answer.sources[0].evidence
    gated = r.ask("Who won the 2022 FIFA World Cup in Qatar?")
    assert not gated.found and gated.support == "gate"


def test_evaluation_runs_on_either_store(tmp_path, store, fake_embedder):
    from rag.evaluate import Question, evaluate

    s = settings_for(tmp_path, store)
    ingest_articles(articles(), settings=s, embedder=fake_embedder)
    r = rag.RAG(
        s, embedder=fake_embedder, generator=CannedGenerator(["The terminal costs 84 million euros [1]."])
    )
    questions = [
        Question("q1", "How much will the ferry terminal cost?", ("84 million",), True),
        Question("q2", "Who won the 2022 FIFA World Cup in Qatar?", (), False),
    ]
    metrics = evaluate(r, questions, k=3)["metrics"]
    assert metrics["recall_at_k"] == 1.0 and metrics["containment"] == 1.0
    assert metrics["refusal_accuracy"] == 1.0


def test_a_commit_that_fails_half_way_is_never_seen(tmp_path, fake_embedder, monkeypatch):
    """Qdrant has no transactions: a commit's points carry its generation and become visible
    only when the meta point names it; what a failed commit wrote is cleared by the next."""
    from rag.store import qdrant

    s = settings_for(tmp_path, "qdrant")
    ingest_articles(articles()[:2], settings=s, embedder=fake_embedder)
    real = qdrant.QdrantTransaction.commit

    def dies_before_the_switch(self, **kw):
        upsert = self.where.client.upsert

        def guarded(collection, **kwargs):
            if collection == self.where.meta:
                raise RuntimeError("the process died here")
            return upsert(collection, **kwargs)

        monkeypatch.setattr(self.where.client, "upsert", guarded)
        try:
            return real(self, **kw)
        finally:
            monkeypatch.setattr(self.where.client, "upsert", upsert)

    monkeypatch.setattr(qdrant.QdrantTransaction, "commit", dies_before_the_switch)
    with pytest.raises(RuntimeError):
        ingest_articles([articles()[2]], settings=s, embedder=fake_embedder)
    with pytest.raises(RuntimeError):
        remove(["ferry"], settings=s)
    monkeypatch.setattr(qdrant.QdrantTransaction, "commit", real)
    snap = open_index(s.index)
    assert sorted(a.id for a in snap.articles()) == ["comet", "ferry"]
    assert {r.article_id for r in snap.chunks(snap.chunk_ids())} == {"comet", "ferry"}
    assert snap.keyword_search("council budget", 5) == []
    # The next commit clears what the failed ones left, and counts stay exact.
    ingest_articles([articles()[2]], settings=s, embedder=fake_embedder)
    snap = open_index(s.index)
    assert sorted(a.id for a in snap.articles()) == ["budget", "comet", "ferry"]
    assert len(snap) == len(snap.chunk_ids()) == sum(a.chunks for a in snap.articles())


def test_the_store_is_recorded_and_an_index_moves_between_stores(tmp_path, fake_embedder):
    s = settings_for(tmp_path, "qdrant")
    ingest_articles(articles(), settings=s, embedder=fake_embedder)
    assert json.loads((s.index / "STORE").read_text())["store"] == "qdrant"
    # Later commands need no flag; naming the other store is refused with the way to move.
    plain = s.with_(store="")
    assert ingest_articles([articles()[0]], settings=plain, embedder=fake_embedder).unchanged == ("ferry",)
    with pytest.raises(rag.ConfigError, match="rag migrate --to faiss"):
        ingest_articles([articles()[0]], settings=s.with_(store="faiss"), embedder=fake_embedder)

    q = fake_embedder.encode_query("How much will the ferry terminal cost?")

    def state():
        snap = open_index(s.index)
        rows = snap.chunks([i for i, _ in snap.search(q, 3)])
        return (
            sorted((a.id, a.chunks, a.title, a.date, a.source) for a in snap.articles()),
            # The story repeats: passages of equal scores come in either order.
            sorted((r.article_id, r.ordinal) for r in rows),
        )

    before = state()
    runner = CliRunner()
    out = runner.invoke(cli, ["migrate", "--to", "faiss", "--index", str(s.index)])
    assert out.exit_code == 0 and "now on the faiss store" in out.output, out.output
    assert store_of(s.index) == "faiss" and not (s.index / "qdrant").exists()
    assert state() == before
    out = runner.invoke(cli, ["migrate", "--to", "faiss", "--index", str(s.index)])
    assert out.exit_code == 1 and "on the faiss store already" in out.output
    out = runner.invoke(cli, ["migrate", "--to", "qdrant", "--index", str(s.index)])
    assert out.exit_code == 0, out.output
    assert store_of(s.index) == "qdrant" and not list(s.index.glob("seg-*"))
    assert state() == before
    out = runner.invoke(cli, ["stats", "--index", str(s.index)])
    assert "qdrant at" in out.output and "articles     3" in out.output
    out = runner.invoke(cli, ["compact", "--index", str(s.index)])
    assert out.exit_code == 0 and "nothing to do" in out.output


def test_the_bundled_models_answer_and_refuse_from_a_qdrant_index(tmp_path, real_embedder, real_generator):
    from .conftest import SAMPLE

    s = rag.Settings(index=tmp_path / "idx", store="qdrant")
    r = rag.RAG(s, embedder=real_embedder, generator=real_generator)
    r.ingest([SAMPLE])
    assert store_of(s.index) == "qdrant"
    answer = r.ask("How much aluminum could Russia sell to the United States?")
    assert answer.found and "2 million" in answer.answer and answer.cited_sources
    off = r.ask("Who won the 2022 FIFA World Cup?")
    assert not off.found and off.support == "gate"


def test_a_move_or_rebuild_that_fails_half_way_leaves_the_index_as_it_was(
    tmp_path, fake_embedder, monkeypatch
):
    """New collections are named in the folder's STORE file only once their first commit is
    complete: a move to Qdrant that fails leaves the FAISS index serving, and can be run again;
    a rebuild (even with another embedder) writes new collections and drops the old ones."""
    from rag.store import migrate, qdrant

    s = settings_for(tmp_path, "faiss")
    ingest_articles(articles(), settings=s, embedder=fake_embedder)

    def failing_commit(self, **kw):
        raise RuntimeError("the server went away")

    monkeypatch.setattr(qdrant.QdrantTransaction, "commit", failing_commit)
    with pytest.raises(RuntimeError):
        migrate(s.index, to="qdrant")
    monkeypatch.undo()
    assert store_of(s.index) == "faiss" and len(open_index(s.index).articles()) == 3
    migrate(s.index, to="qdrant")
    assert store_of(s.index) == "qdrant" and len(open_index(s.index).articles()) == 3
    first = qdrant.recorded(s.index)["collection"]

    other = type(fake_embedder)(name="other", dimension=32)
    report = ingest_articles(articles()[:1], settings=s.with_(store=""), embedder=other, rebuild=True)
    assert report.added == ("ferry",)
    snap = open_index(s.index)
    assert [a.id for a in snap.articles()] == ["ferry"] and snap.embedder["name"] == "other"
    assert qdrant.recorded(s.index)["collection"] != first
    assert not qdrant.Collections(s.index, {"collection": first}).client.collection_exists(f"{first}_meta")


def test_a_collection_made_again_under_the_same_name_starts_empty(tmp_path, fake_embedder):
    r = rag.RAG(rag.Settings(index=tmp_path / "idx", store="qdrant"), embedder=fake_embedder)
    work = r.create_collection("work")
    ingest_articles(articles(), settings=work.settings, embedder=fake_embedder)
    assert len(work.articles()) == 3 and [c.articles for c in r.collections()] == [0, 3]
    r.delete_collection("work")
    again = r.create_collection("work")
    ingest_articles(articles()[:1], settings=again.settings, embedder=fake_embedder)
    assert [a.id for a in open_index(again.settings.folder).articles()] == ["ferry"]


def test_searches_and_a_commit_at_once_on_local_mode(tmp_path, fake_embedder):
    """Local mode has no locks of its own: the store serialises its calls, so a server's
    questions and its watcher's commits can share it."""
    import threading

    s = settings_for(tmp_path, "qdrant")
    ingest_articles(articles()[:2], settings=s, embedder=fake_embedder)
    errors: list[BaseException] = []
    stop = threading.Event()

    def ask() -> None:
        q = fake_embedder.encode_query("ferry terminal cost")
        while not stop.is_set():
            try:
                snap = open_index(s.index)
                snap.search(q, 5)
                snap.keyword_search("ferry terminal", 5)
            except BaseException as e:  # collected for the assertion below
                errors.append(e)
                return

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(6):
        extra = Article(id=f"more{i}", title=f"More {i}", text=f"Another ferry story number {i}. " * 10)
        ingest_articles([extra], settings=s, embedder=fake_embedder)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and len(open_index(s.index).articles()) == 8
