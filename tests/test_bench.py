"""`rag bench`, and the index type that follows the corpus (exact, then IVF past a threshold)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from rag.ingest import ingest_articles, remove
from rag.settings import Settings
from rag.store import FLAT, IVF, Snapshot, all_vectors, build_ann
from rag.types import Article

WORDS = [f"w{i}" for i in range(400)]


def article(i: int, rng: random.Random, version: int = 0) -> Article:
    # Two topics of 200 words each: FakeEmbedder's bag-of-words vectors get some structure.
    topic = WORDS[(i % 2) * 200 : (i % 2) * 200 + 200]
    text = " ".join(rng.choice(topic) for _ in range(24)) + f" v{version}."
    return Article(id=f"a{i}", text=text, title=f"T{i}")


def exact_top(vectors: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    scores = vectors @ q
    return [int(ids[j]) for j in np.argsort(-scores, kind="stable")[:k]]


def test_segments_are_exact_while_small_ivf_when_large_and_search_as_one(tmp_path, fake_embedder):
    """Each commit adds a segment. While the index is under `ann_threshold` vectors its
    segments are exact, and search over several is exact search over all their vectors; the
    commit that crosses the threshold folds them into one IVF segment under the same ids;
    later segments are built on its coarse quantizer and searched with it as one index;
    removals are left out of searches; folded below half the threshold, the index is exact."""
    from rag.store import compact

    small = Settings(index=tmp_path / "small", chunk_tokens=40, chunk_overlap=8, ann_threshold=5000)
    rng = random.Random(0)
    for part in (range(0, 700), range(700, 1400)):
        ingest_articles([article(i, rng) for i in part], settings=small, embedder=fake_embedder)
    snap = Snapshot.open(small.index)
    assert [seg.index_type for seg in snap.segments] == [FLAT, FLAT] and len(snap) == 1400
    parts = [all_vectors(seg.index) for seg in snap.segments]
    ids = np.concatenate([p[0] for p in parts])
    vecs = np.vstack([p[1] for p in parts])
    assert sorted(ids.tolist()) == snap.chunk_ids()
    queries = [fake_embedder.encode_query(article(i, random.Random(i)).text) for i in range(100)]
    for q in queries[:20]:
        got = [round(x, 5) for _, x in snap.search(q, 10)]
        assert got == [round(float(x), 5) for x in np.sort(vecs @ q)[::-1][:10]]

    s = Settings(index=tmp_path / "idx", chunk_tokens=40, chunk_overlap=8, ann_threshold=1000)
    rng = random.Random(0)
    ingest_articles([article(i, rng) for i in range(700)], settings=s, embedder=fake_embedder)
    snap = Snapshot.open(s.index)
    assert snap.manifest["index_type"] == FLAT == snap.stats()["index_type"]
    assert snap.manifest["index_params"]["ann_threshold"] == 1000
    before_ids, before_vecs = all_vectors(snap.index)
    assert len(before_ids) == 700

    # Crossing the threshold in one commit folds the index into one IVF segment, same ids.
    ingest_articles([article(i, rng) for i in range(700, 1400)], settings=s, embedder=fake_embedder)
    snap = Snapshot.open(s.index)
    params = snap.manifest["index_params"]
    assert len(snap.segments) == 1 and snap.manifest["index_type"] == IVF
    assert params["nlist"] >= 2 and 1 <= params["nprobe"] <= params["nlist"]
    assert params["trained_on"] == 1400 and params["tuned_recall_at_10"] >= 0.95
    assert snap.stats()["index_params"]["nprobe"] == params["nprobe"]
    assert faiss_nprobe(snap) == params["nprobe"]
    ids, vecs = all_vectors(snap.index)
    assert ids.tolist() == snap.chunk_ids() and len(snap) == 1400
    # The old chunks keep their ids and (up to fp16) their vectors.
    np.testing.assert_allclose(snap.vectors(before_ids[:50].tolist()), before_vecs[:50], atol=2e-3)

    # A later commit is a segment on the same coarse quantizer: searched with the first as one.
    ingest_articles([article(i, rng) for i in range(1400, 1500)], settings=s, embedder=fake_embedder)
    snap = Snapshot.open(s.index)
    first, second = snap.segments
    assert second.index_type == IVF and second.coarse == first.coarse and second.rows == 100
    assert not second.index_params.get("tuned_recall_at_10") or second.index_params["trained_on"] == 1400
    more = [all_vectors(seg.index) for seg in snap.segments]
    ids = np.concatenate([p[0] for p in more])
    vecs = np.vstack([p[1] for p in more])

    # Search agrees with exact search over the same vectors for most queries.
    top1 = overlap = 0
    for q in queries:
        got = [i for i, _ in snap.search(q, 10)]
        want = exact_top(vecs, ids, q, 10)
        top1 += got[0] == want[0]
        overlap += len(set(got) & set(want))
    assert top1 >= 90 and overlap >= 0.9 * 100 * 10

    # Remove and replace: the IVF segment is not rewritten, its dead rows are left out.
    assert remove(["a3", "a4"], settings=s) == []
    ingest_articles([article(5, rng, version=1)], settings=s, embedder=fake_embedder)
    snap = Snapshot.open(s.index)
    assert snap.manifest["index_type"] == IVF and snap.segments[0].deleted == {"a3", "a4", "a5"}
    assert len(snap) == 1498 == snap.manifest["counts"]["vectors"] == len(snap.chunk_ids())
    assert {a.id for a in snap.articles()} >= {"a5"} and "a3" not in {a.id for a in snap.articles()}
    dead = set(snap.segments[0].dead_chunks().tolist())
    assert len(dead) == 3
    for q in queries[:30]:
        assert not {i for i, _ in snap.search(q, 50)} & dead
    # A filtered search over the segments searched as one is exact over the allowed chunks.
    from rag.filters import Filters

    allowed = snap.filter_chunks(Filters(ids=("a7", "a1450", "a20", "a1499")))
    assert allowed and not set(allowed) & dead
    for q in queries[:10]:
        exact = sorted(
            zip(allowed, (snap.vectors(allowed) @ q).tolist(), strict=True), key=lambda h: (-h[1], h[0])
        )
        got = snap.search(q, 5, allowed=allowed)
        assert [i for i, _ in got] == [i for i, _ in exact][:5]
    # A keyword hit missing from the dense results is scored through vectors(): still works.
    from rag.retrieval import search

    hits = search(snap, "w3 w5 w7", fake_embedder.encode_query("w3 w5 w7"), 5)
    assert len(hits) == 5 and not {r.id for r, _ in hits} & dead

    # Folded below half the threshold the index goes back to exact search.
    remove([f"a{i}" for i in range(450, 1500)], settings=s)
    compact(s.index, everything=True, ann_threshold=1000)
    snap = Snapshot.open(s.index)
    assert snap.manifest["index_type"] == FLAT and len(snap) == 448 and len(snap.segments) == 1
    assert all_vectors(snap.index)[0].tolist() == snap.chunk_ids()


def faiss_nprobe(snap: Snapshot) -> int:
    import faiss

    return int(faiss.extract_index_ivf(snap.index).nprobe)


def test_small_segments_share_the_coarse_quantizer_large_ones_train_their_own(tmp_path, fake_embedder):
    """Once the index is approximate, a segment under `ann_threshold` vectors is built on the
    coarse quantizer trained on the most vectors (nothing trained; searched with it as one),
    a larger one trains its own. Folding everything retrains on all of it."""
    from rag.store import compact

    s = Settings(index=tmp_path / "idx", chunk_tokens=40, chunk_overlap=8, ann_threshold=300)
    rng = random.Random(1)
    ingest_articles([article(i, rng) for i in range(300)], settings=s, embedder=fake_embedder)
    first = Snapshot.open(s.index).manifest["index_params"]
    assert first["trained_on"] == 300
    ingest_articles([article(i, rng) for i in range(300, 900)], settings=s, embedder=fake_embedder)
    ingest_articles([article(i, rng) for i in range(900, 950)], settings=s, embedder=fake_embedder)
    snap = Snapshot.open(s.index)
    # The first segment is not touched by later commits.
    assert [seg.index_params["trained_on"] for seg in snap.segments] == [300, 600, 600]
    assert snap.segments[2].coarse == snap.segments[1].coarse != snap.segments[0].coarse
    assert [(s.folder / "coarse.faiss").exists() for s in snap.segments] == [True, True, False]
    hits = snap.search(fake_embedder.encode_query(article(920, random.Random(920)).text), 5)
    assert len(hits) == 5
    compact(s.index, everything=True, ann_threshold=300)
    params = Snapshot.open(s.index).manifest["index_params"]
    assert params["trained_on"] == 950 and params["nlist"] >= first["nlist"]


@pytest.mark.slow
def test_ann_recall_on_realistic_vectors(real_embedder):
    """IVF recall@10 against exact search on vectors drawn from a Gaussian mixture fitted to
    real embeddings (seeded), at the nprobe the store tunes for itself."""
    import faiss

    from rag.bench import fit_mixture, generated_article, sample_mixture

    rng = random.Random(0)
    texts = []
    for i in range(60):
        a = generated_article(i, rng)
        texts += [f"{a.title}\n{p}" for p in a.text.split("\n")]
    real = real_embedder.encode(texts)
    mix = fit_mixture(real, components=4, seed=0)
    xb = sample_mixture(mix, 20_000, seed=1)
    xq = sample_mixture(mix, 200, seed=2)
    ids = np.arange(10, 20_010, dtype=np.int64)
    index, params = build_ann(xb, ids)
    assert params["nprobe"] < params["nlist"]  # approximate, not a disguised exhaustive scan
    _, truth = faiss.knn(xq, xb, 10, metric=faiss.METRIC_INNER_PRODUCT)
    _, found = index.search(xq, 10)
    recall = np.mean([len(set(f) & set(ids[t])) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.95, (recall, params)


@pytest.mark.slow
def test_rag_bench_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    p = subprocess.run(
        [sys.executable, "-m", "rag.cli", "bench", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=1800,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "INGEST" in p.stdout and "QUERY" in p.stdout and "SCALE" in p.stdout and "TARGETS" in p.stdout
    assert "WEB" in p.stdout
    r = json.loads(out.read_text())
    sections = {"settings", "machine", "ingest", "query", "cold_start", "startup", "scale", "web", "targets"}
    assert sections <= set(r)
    w = r["web"]
    assert (w["pages"], w["added"], w["failed"]) == (10, 10, 0) and w["pages_per_s"] > 0 and w["chunks"] > 0
    g = r["ingest"]
    assert g["chunks"] > 0 and g["ingest_s"] > 0 and g["encode_alone_s"] > 0 and g["ratio"] > 0
    assert 0 <= g["outside_encoding_share"] < 1
    st = r["query"]["stages"]
    for key in ("query_embedding_ms", "search_ms", "prompt_assembly_ms", "ttft_ms", "answer_ms"):
        assert st[key]["p50"] > 0 and st[key]["p95"] >= st[key]["p50"]
    for key in ("query_embedding_ms", "search_ms", "ttft_ms", "decode_tokens_per_s", "answer_ms"):
        assert "raw" in st[key] and st[key]["ratio_p50"] is not None
    assert r["query"]["same_prompt_as_pipeline"]
    assert r["cold_start"]["rag_ask_first_token_s"] > 0 and r["cold_start"]["llama_alone_first_token_s"] > 0
    assert r["startup"]["help_s"] > 0 and r["startup"]["list_s"] > 0
    (point,) = r["scale"]
    assert point["vectors"] == 5000 and point["ann"]["recall_at_10"] >= 0.9
    assert point["exact"]["search_ms"]["p50"] > 0 and point["ann"]["rss_mib"] >= 0
    names = {t["name"] for t in r["targets"]}
    assert {
        "ingest_ratio",
        "ingest_chunks_per_s",
        "warm_answer_ratio",
        "warm_ttft_s",
        "cold_start_ratio",
        "server_ask_ratio",
        "help_s",
        "recall_at_10_1m",
    } <= names
    server = r["cold_start"]["server"]
    assert server["rag_ask_first_token_s"] > 0 and server["ratio_to_warm"] > 0
    assert not (tmp_path / "index").exists()  # the bench works in a temporary folder only
