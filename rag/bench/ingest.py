"""The INGEST section: `rag.ingest.ingest` on a JSONL corpus into fresh indexes, against
`SentenceTransformer.encode` alone on the very chunk texts ingest embeds (same batch size)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..settings import Settings
from ..types import Article
from .measure import Progress, TimedEmbedder, ratio_of, timed_method

if TYPE_CHECKING:
    import numpy as np

    from ..embedding import Encoder


def bench_ingest(
    corpus: Path,
    *,
    settings: Settings,
    embedder: Encoder,
    workdir: Path,
    repeat: int = 1,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], np.ndarray, Path]:
    """Ingest `corpus` (JSONL) into fresh indexes through `rag.ingest.ingest`, against
    `SentenceTransformer.encode` alone on the same chunk texts with the same batch size.
    Returns the figures, the encoded vectors, and the last index built."""
    import numpy as np

    from .. import store
    from ..ingest import chunk_article, embed_text, ingest
    from ..loaders import iter_articles

    size_mb = corpus.stat().st_size / 1e6
    # The corpus repeats the sample on purpose and its generated articles share templates:
    # every one is indexed (copies are not collapsed), as the encode-alone side counts them.
    # Their signatures are still computed, so ingest's cost includes it.
    settings = settings.with_(max_file_mb=max(settings.max_file_mb, size_mb * 1.1 + 1), dedup_threshold=0)
    by_id: dict[str, Article] = {}
    for a in iter_articles([corpus], max_file_mb=settings.max_file_mb):
        if isinstance(a, Article):
            by_id[a.id] = a  # the last record of an id wins, as in ingest
    texts: list[str] = []
    for a in by_id.values():
        chunks, title = chunk_article(a, embedder, settings)
        texts += [embed_text(title, c.text) for c in chunks]
    n_bytes = sum(len(a.text.encode("utf-8")) for a in by_id.values())
    if not texts:
        from ..errors import ConfigError

        raise ConfigError(f"{corpus} holds no article text to ingest")
    # The raw component: sentence-transformers' encode, or for an embedder that runs its
    # model itself (OpenVINO's runtime, an endpoint), its own encode of the same texts.
    model = getattr(embedder, "model", None)
    bs = settings.batch_size

    def raw(batch: list[str]) -> np.ndarray:
        if model is None:
            return embedder.encode(batch)
        return model.encode(
            batch, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )

    raw(texts[: 2 * bs])

    # ST sorts a call's texts by length; slicing the length-sorted list gives it the same
    # batches as one call while letting the progress bar move.
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    step = 16 * bs

    def encode_alone() -> tuple[float, np.ndarray]:
        out = np.zeros((len(texts), embedder.dimension), dtype=np.float32)
        t = time.perf_counter()
        for lo in range(0, len(order), step):
            idx = order[lo : lo + step]
            out[idx] = raw([texts[i] for i in idx])
            if progress:
                progress("Encoding alone", min(lo + step, len(texts)), len(texts))
        return time.perf_counter() - t, out

    def ingest_once(n: int) -> dict[str, Any]:
        timed = TimedEmbedder(embedder)
        inside: dict[str, float] = {}
        s = settings.with_(index=workdir / f"ingest-{n}")

        def cb(done: int, total: int) -> None:
            if progress:
                progress("Ingesting", done, total)

        with timed_method(store.Transaction, "commit", inside):
            t = time.perf_counter()
            report = ingest([corpus], settings=s, embedder=timed, rebuild=True, progress=cb)  # type: ignore[arg-type]
            seconds = time.perf_counter() - t
        return {
            "index": s.index,
            "seconds": seconds,
            "report": report,
            "encode_s": timed.seconds["encode"],
            "tokenise_s": timed.seconds["token_offsets"] + timed.seconds["count_tokens"],
            "commit_s": inside.get("commit", 0.0),
        }

    raws: list[float] = []
    runs: list[dict[str, Any]] = []
    vectors = None
    # ABBA: with two or more repeats, drift on a shared machine hurts both sides alike.
    plan = (
        ["raw", "ingest"] * repeat
        if repeat == 1
        else (["raw", "ingest", "ingest", "raw"] * repeat)[: 2 * repeat]
    )
    for n, what in enumerate(plan):
        if what == "raw":
            s_raw, vectors = encode_alone()
            raws.append(s_raw)
        else:
            runs.append(ingest_once(n))
    best = min(runs, key=lambda r: r["seconds"])
    raw = min(raws)
    total = best["seconds"]
    report = best["report"]
    chunks = report.chunks
    articles = len(report.added) + len(report.updated)
    result = {
        "articles": articles,
        "chunks": chunks,
        "text_mb": round(n_bytes / 1e6, 3),
        "batch_size": bs,
        "failed": len(report.failed),
        "ingest_s": round(total, 3),
        "articles_per_s": round(articles / total, 2),
        "chunks_per_s": round(chunks / total, 2),
        "mb_per_s": round(n_bytes / 1e6 / total, 4),
        "encode_alone_s": round(raw, 3),
        "encode_alone_chunks_per_s": round(len(texts) / raw, 2),
        "ratio": ratio_of(total, raw),
        "inside_ingest_s": {
            "encode": round(best["encode_s"], 3),
            "tokenise_for_chunking": round(best["tokenise_s"], 3),
            "commit_sqlite_fts_faiss_fsync": round(best["commit_s"], 3),
            "other_parse_chunk_hash": round(
                total - best["encode_s"] - best["tokenise_s"] - best["commit_s"], 3
            ),
        },
        "outside_encoding_share": round((total - best["encode_s"]) / total, 4),
        "runs": [
            {"what": w, "seconds": round(v, 3)}
            for w, v in zip(plan, _interleave(plan, raws, [r["seconds"] for r in runs]), strict=True)
        ],
    }
    assert vectors is not None
    return result, vectors, best["index"]


def _interleave(plan: Sequence[str], raws: Sequence[float], runs: Sequence[float]) -> list[float]:
    it_raw, it_run = iter(raws), iter(runs)
    return [next(it_raw) if w == "raw" else next(it_run) for w in plan]
