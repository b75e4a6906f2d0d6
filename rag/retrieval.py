"""Dense retrieval over a snapshot, and the evidence sentences of each passage."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import date
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from .chunking import split_sentences
from .filters import article_date
from .store import ChunkRow, Snapshot
from .types import Source

T = TypeVar("T")

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

FUSIONS = ("rrf", "convex", "dense")


def search(
    snapshot: Snapshot,
    query: str,
    query_vec: np.ndarray,
    k: int,
    *,
    fusion: str = "convex",
    weight: float = 0.5,
    allowed: Sequence[int] | None = None,
    mmr: float = 1.0,
) -> list[tuple[ChunkRow, float]]:
    """Top-k chunks by dense similarity fused with BM25, each with its cosine similarity.

    `convex` ranks by `weight * cosine' + (1 - weight) * bm25'`, both min-max scaled over
    the candidate pool; `rrf` by reciprocal rank fusion; `dense` ignores keywords.
    `allowed` restricts the search to those chunk ids (metadata filters). `mmr` below 1
    re-ranks by maximal marginal relevance: `mmr * fused - (1 - mmr) * max cosine to the
    chunks already taken`, so near-duplicate passages give way to new ones.
    """
    pool = max(4 * k, 20)
    dense = snapshot.search(query_vec, pool, allowed=allowed)
    sparse = [] if fusion == "dense" else snapshot.keyword_search(query, pool, allowed=allowed)
    cos = dict(dense)
    missing = [i for i, _ in sparse if i not in cos]
    if missing:
        cos.update(zip(missing, (snapshot.vectors(missing) @ query_vec).tolist(), strict=True))
    if fusion == "dense":
        fused = cos
    elif fusion == "rrf":
        fused = dict.fromkeys(cos, 0.0)
        for ranking in (dense, sparse):
            for rank, (i, _) in enumerate(ranking):
                fused[i] += 1.0 / (60 + rank)
    elif fusion == "convex":
        bm = dict(sparse)
        fused = {
            i: weight * _scale(c, cos.values()) + (1 - weight) * _scale(bm.get(i, 0.0), bm.values())
            for i, c in cos.items()
        }
    else:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    ranked = sorted(fused, key=lambda i: (-fused[i], -cos[i]))
    top = _mmr(snapshot, ranked, fused, k, mmr) if mmr < 1.0 else ranked[:k]
    rows = snapshot.chunks(top)
    return [(r, float(cos[r.id])) for r in rows]


def _mmr(snapshot: Snapshot, ranked: list[int], fused: dict[int, float], k: int, lam: float) -> list[int]:
    cands = ranked[: max(2 * k, 10)]
    vecs = snapshot.vectors(cands)
    sim = vecs @ vecs.T
    rel = np.array([fused[i] for i in cands])
    taken: list[int] = []
    left = list(range(len(cands)))
    while left and len(taken) < k:
        if taken:
            redundancy = sim[np.ix_(left, taken)].max(axis=1)
            scores = lam * rel[left] - (1 - lam) * redundancy
        else:
            scores = rel[left]
        best = left[int(np.argmax(scores))]
        taken.append(best)
        left.remove(best)
    return [cands[i] for i in taken]


def rerank(
    cross_encoder: CrossEncoder, query: str, hits: list[tuple[ChunkRow, float]], k: int
) -> list[tuple[ChunkRow, float]]:
    """The `k` best of `hits` by a sentence-transformers CrossEncoder's (query, passage)
    scores; each keeps its cosine similarity."""
    if not hits:
        return []
    pairs = [(query, f"{r.title}\n{r.text}" if r.title else r.text) for r, _ in hits]
    scores = np.asarray(cross_encoder.predict(pairs, show_progress_bar=False), dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")[:k]
    return [hits[int(i)] for i in order]


def answering(scores: Sequence[float], ratio: float) -> list[int]:
    """Indices of the items whose score is at least `ratio` times the best: the passages
    that answer about as well as the best one does."""
    best = max(scores, default=0.0)
    return [i for i, x in enumerate(scores) if best > 0 and x >= ratio * best]


def within(sources: Sequence[Source], margin: float) -> list[Source]:
    """The sources whose score (cosine) is within `margin` of the best, renumbered in their
    order (all of them when `margin` is 0): passages far behind the best rarely hold the
    answer, and each costs the model its tokens."""
    if margin <= 0 or not sources:
        return list(sources)
    best = max(x.score for x in sources)
    kept = [x for x in sources if x.score >= best - margin]
    return [x if x.n == n else replace(x, n=n) for n, x in enumerate(kept, start=1)]


def answering_alike(
    cosines: Sequence[float], coverages: Sequence[float], *, close: float = 0.85, floor: float = 0.7
) -> list[int]:
    """Indices of the passages that answer about as well as the best: a cosine within `close`
    of the best cosine, or all of the best coverage of the question's words with a cosine
    within `floor` of it (a newer article that words the same fact differently)."""
    if not cosines:
        return []
    best_cos, best_cov = max(cosines), max(coverages)
    return [
        i
        for i, (c, v) in enumerate(zip(cosines, coverages, strict=True))
        if best_cos > 0 and (c >= close * best_cos or (v >= best_cov and c >= floor * best_cos))
    ]


def newest_first(items: Sequence[T], band: Sequence[int], date_of: Callable[[T], str], k: int) -> list[T]:
    """`k` of `items` (ranked best first) for a question asking for the newest: the newest
    item of `band` (indices of those that answer about as well as the best) first, taking the
    place of the k-th when it ranks below, the others outside the band next, the band's
    older items last. Nothing of the top k is dropped but its last, and only for a newer answer."""
    top = list(range(min(k, len(items))))
    if not band or not top:
        return [items[i] for i in top]
    # An undated article, or one of the same day, keeps its rank among its equals.
    newest = min(band, key=lambda i: (-(article_date(date_of(items[i])) or date.min).toordinal(), i))
    if newest not in top:
        top[-1] = newest
    inside = set(band)
    rest = [i for i in top if i not in inside]
    older = [i for i in top if i in inside and i != newest]
    return [items[i] for i in [newest, *rest, *older]]


def by_date(items: Sequence[T], date_of: Callable[[T], str]) -> list[T]:
    """`items` oldest first; undated ones first too (as the oldest), in their order."""
    keyed = [(article_date(date_of(x)) or date.min, i, x) for i, x in enumerate(items)]
    return [x for _, _, x in sorted(keyed, key=lambda t: (t[0], t[1]))]


def _scale(x: float, values: Iterable[float]) -> float:
    vals = list(values)
    if not vals:
        return 0.0
    lo, hi = min(vals), max(vals)
    return (x - lo) / (hi - lo) if hi > lo else (1.0 if x >= hi and x > 0 else 0.0)


def evidence(
    encode: Callable[[Sequence[str]], np.ndarray],
    query_vec: np.ndarray,
    texts: Sequence[str],
    *,
    per_text: int = 2,
    margin: float = 0.08,
) -> list[tuple[str, ...]]:
    """For each text, its sentences most similar to the query: the best one, plus up to
    `per_text - 1` more within `margin` of it. All sentences are embedded in one batch by
    `encode` (an embedder's `encode`, or a cache in front of it)."""
    spans = [split_sentences(t) for t in texts]
    sentences = [t[s:e] for t, sp in zip(texts, spans, strict=True) for s, e in sp]
    if not sentences:
        return [() for _ in texts]
    sims = encode(sentences) @ query_vec
    out: list[tuple[str, ...]] = []
    pos = 0
    for t, sp in zip(texts, spans, strict=True):
        n = len(sp)
        if n == 0:
            out.append(())
            continue
        local = sims[pos : pos + n]
        order = np.argsort(-local)[:per_text]
        best = local[order[0]]
        keep = sorted(int(i) for i in order if local[i] >= best - margin)
        out.append(tuple(t[sp[i][0] : sp[i][1]] for i in keep))
        pos += n
    return out
