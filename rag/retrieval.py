"""Dense retrieval over a snapshot, and the evidence sentences of each passage."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .chunking import split_sentences
from .embedding import Embedder
from .store import ChunkRow, Snapshot


def search(snapshot: Snapshot, query_vec: np.ndarray, k: int) -> list[tuple[ChunkRow, float]]:
    """Top-k chunks by inner product (cosine on normalised vectors)."""
    found = snapshot.search(query_vec, k)
    rows = snapshot.chunks([i for i, _ in found])
    scores = dict(found)
    return [(r, scores[r.id]) for r in rows]


def evidence(
    embedder: Embedder,
    query_vec: np.ndarray,
    texts: Sequence[str],
    *,
    per_text: int = 2,
    margin: float = 0.08,
) -> list[tuple[str, ...]]:
    """For each text, its sentences most similar to the query: the best one, plus up to
    `per_text - 1` more within `margin` of it. All sentences are embedded in one batch."""
    spans = [split_sentences(t) for t in texts]
    sentences = [t[s:e] for t, sp in zip(texts, spans, strict=True) for s, e in sp]
    if not sentences:
        return [() for _ in texts]
    sims = embedder.encode(sentences) @ query_vec
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
