"""The COMMIT section (`--only commit`): what adding one article costs as the index grows, and
what searching many segments costs against one. At each size an index of synthetic articles
(short generated texts, 8 chunks each, vectors from the scale section's mixture or random)
is built in one commit; then one real article is ingested through the pipeline (dedup,
chunking, embedding, commit) a few times: seconds, and bytes the process wrote. At the
largest size the same number of vectors is also committed in `segments` equal parts (a bulk
load in batches: what the tiered folding leaves of them), and as one large commit followed by
small ones until the index holds `segments` segments (a feed), each searched, folded into one
(`rag compact --all`) and searched again."""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..settings import Settings
from .measure import Progress, p50_p95, percentile, ratio_of

if TYPE_CHECKING:
    import numpy as np

    from ..embedding import Encoder
    from ..types import Article, Chunk

CHUNKS_PER_ARTICLE = 8
_WORDS = (
    "council budget harbour ferry strike union minister election court ruling storm flood river "
    "bridge school hospital nurse doctor police station market price wheat energy wind farm "
    "museum festival ticket league final coach player transfer bank rate inflation export port"
).split()


def written_bytes() -> int:
    """Bytes this process has handed to write() so far (Linux /proc/self/io `wchar`)."""
    try:
        with open("/proc/self/io", encoding="ascii") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _articles(n_chunks: int, seed: int, prefix: str = "s") -> Iterator[tuple[Article, list[Chunk]]]:
    """Synthetic articles of `CHUNKS_PER_ARTICLE` chunks of ~30 words each, with offsets."""
    from ..types import Article, Chunk

    rng = random.Random(seed)
    for a in range((n_chunks + CHUNKS_PER_ARTICLE - 1) // CHUNKS_PER_ARTICLE):
        aid = f"{prefix}{a:07d}"
        pieces = [" ".join(rng.choices(_WORDS, k=30)) + "." for _ in range(CHUNKS_PER_ARTICLE)]
        text = " ".join(pieces)
        chunks, pos = [], 0
        for i, p in enumerate(pieces):
            chunks.append(Chunk(article_id=aid, ordinal=i, start=pos, end=pos + len(p), text=p))
            pos += len(p) + 1
        yield Article(id=aid, text=text, title=f"Synthetic report {a}", date="2026-01-01"), chunks


def _vectors(n: int, dimension: int, mix: Any, seed: int) -> np.ndarray:
    import numpy as np

    if mix is not None:
        from .scale import sample_mixture

        return sample_mixture(mix, n, seed=seed)
    x = np.random.default_rng(seed).standard_normal((n, dimension)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _build(
    index: Path,
    parts: Sequence[int],
    *,
    embedder: Encoder,
    settings: Settings,
    mix: Any,
    seed: int,
    first: int = 0,
) -> float:
    """An index of synthetic articles committed as `parts` (chunk counts), one commit each
    (numbered from `first`: the articles of each are new); returns the seconds it took."""
    from ..ingest import _TITLE_TOKENS
    from ..store import Transaction

    record = {
        "name": embedder.name,
        "dimension": embedder.dimension,
        "max_seq_length": embedder.max_seq_length,
        "backend": embedder.backend,
    }
    chunking = {
        "chunk_tokens": settings.chunk_tokens,
        "chunk_overlap": settings.chunk_overlap,
        "title_tokens": _TITLE_TOKENS,
        "splitter": "sentences",
    }
    t = time.perf_counter()
    for p, n in enumerate(parts, start=first):
        tx = Transaction(
            index,
            embedder=record,
            chunking=chunking,
            ann_threshold=settings.ann_threshold,
            probe=embedder.probe,
        )
        vectors = _vectors(n + CHUNKS_PER_ARTICLE, embedder.dimension, mix, seed + p)
        pos = 0
        for article, chunks in _articles(n, seed + 1000 * p, prefix=f"p{p}-"):
            tx.put(article, chunks, vectors[pos : pos + len(chunks)])
            pos += len(chunks)
        tx.commit()
    return time.perf_counter() - t


def _add_one(index: Path, *, settings: Settings, embedder: Encoder, runs: int, seed: int) -> dict[str, Any]:
    """One real article ingested through the pipeline, `runs` times (each a new article)."""
    from ..ingest import ingest_articles
    from .corpus import generated_article

    rng = random.Random(seed)
    s = settings.with_(index=index)
    seconds, wrote, chunks = [], [], []
    for i in range(runs):
        article = generated_article(10_000_000 + i, rng)
        before = written_bytes()
        t = time.perf_counter()
        report = ingest_articles([article], settings=s, embedder=embedder)
        seconds.append(time.perf_counter() - t)
        wrote.append(written_bytes() - before)
        chunks.append(report.chunks)
    return {
        "runs": runs,
        "article_chunks": chunks[0],
        "seconds": p50_p95(seconds, 3),
        "seconds_max": round(max(seconds), 3),
        "written_mb": round(percentile(wrote, 0.5) / 1e6, 3),
        "written_mb_max": round(max(wrote) / 1e6, 3),
    }


def _search_ms(index: Path, queries: np.ndarray, k: int, truth: np.ndarray | None) -> dict[str, Any]:
    """Search p50/p95 over the index's segments, its recall@10 against `truth` (exact top-10
    ids per query), how many segments there are and the largest IVF nprobe among them."""
    import numpy as np

    from ..store import Snapshot

    snap = Snapshot.open(index)
    for q in queries[:5]:
        snap.search(q, k)  # vectors loaded, caches warm
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        hits = snap.search(q, k)
        times.append((time.perf_counter() - t) * 1000)
        found.append([i for i, _ in hits[:10]])
    out: dict[str, Any] = {
        "search_ms": p50_p95(times, 3),
        "segments": len(snap.segments),
        "nprobe": max((int(s.index_params.get("nprobe", 0)) for s in snap.segments), default=0),
    }
    if truth is not None:
        out["recall_at_10"] = round(
            float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])), 4
        )
    snap.close()
    return out


def _segments(index: Path) -> int:
    from ..store import Snapshot

    snap = Snapshot.open(index)
    try:
        return len(snap.segments)
    finally:
        snap.close()


def _truth(index: Path, queries: np.ndarray) -> np.ndarray:
    """The exact top-10 chunk ids of each query over every live vector of the index."""
    import faiss
    import numpy as np

    from ..store import Snapshot, all_vectors

    snap = Snapshot.open(index)
    ids, vecs = [], []
    for seg in snap.segments:
        i, v = all_vectors(seg.index)
        alive = ~np.isin(i, seg.dead_chunks())
        ids.append(i[alive])
        vecs.append(v[alive])
    snap.close()
    every = np.concatenate(ids)
    _, pos = faiss.knn(queries, np.vstack(vecs), 10, metric=faiss.METRIC_INNER_PRODUCT)
    return every[pos]


def bench_commit(
    sizes: Sequence[int],
    *,
    settings: Settings,
    embedder: Encoder,
    workdir: Path,
    mix: Any = None,
    segments: int = 20,
    runs: int = 5,
    queries: int = 200,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The commit cost at each size, and search over `segments` segments at the largest."""
    from ..store import compact

    qv = _vectors(queries, embedder.dimension, mix, seed + 99)
    k = max(4 * settings.top_k, 20)  # what retrieval asks the vector search for
    points = []
    for step, n in enumerate(sizes):
        if progress:
            progress("Commit cost by index size", step, len(sizes))
        index = workdir / f"commit-{n}"
        built = _build(index, [n], embedder=embedder, settings=settings, mix=mix, seed=seed)
        size = sum(f.stat().st_size for f in index.rglob("*") if f.is_file())
        added = _add_one(index, settings=settings, embedder=embedder, runs=runs, seed=seed)
        points.append(
            {
                "chunks": n,
                "build_s": round(built, 1),
                "index_mb": round(size / 1e6, 1),
                "add_one_article": added,
            }
        )
        shutil.rmtree(index, ignore_errors=True)
    if progress:
        progress("Commit cost by index size", len(sizes), len(sizes))
    n = max(sizes)
    # Two ways to reach the largest size: `segments` equal commits (a bulk load in batches:
    # every segment large enough for its own IVF, folded by tier as they come), and one large
    # commit then small ones (a feed) until the index holds `segments` segments.
    bulk = [n // segments + (1 if i < n % segments else 0) for i in range(segments)]
    scenarios = {}
    for step, name in enumerate(("bulk", "feed")):
        if progress:
            progress("Search over segments", step, 2)
        index = workdir / f"segments-{name}-{n}"
        opts = {"embedder": embedder, "settings": settings, "mix": mix, "seed": seed}
        if name == "bulk":
            parts = bulk
            built = _build(index, parts, **opts)
        else:
            parts = [n - n // 5]
            step = max(CHUNKS_PER_ARTICLE, n // 400)
            built = _build(index, parts, **opts)
            while _segments(index) < segments and sum(parts) + step <= n:
                built += _build(index, [step], first=len(parts), **opts)
                parts.append(step)
        truth = _truth(index, qv)
        many = _search_ms(index, qv, k, truth)
        t = time.perf_counter()
        compact(index, everything=True, ann_threshold=settings.ann_threshold)
        folded_s = time.perf_counter() - t
        one = _search_ms(index, qv, k, truth)
        shutil.rmtree(index, ignore_errors=True)
        scenarios[name] = {
            "commits": len(parts),
            "chunks": sum(parts),
            "k": k,
            "build_s": round(built, 1),
            "compact_s": round(folded_s, 1),
            "segmented": many,
            "merged": one,
            "ratio_p50": ratio_of(many["search_ms"]["p50"], one["search_ms"]["p50"]),
        }
    if progress:
        progress("Search over segments", 2, 2)
    return {"sizes": points, "segments": scenarios}
