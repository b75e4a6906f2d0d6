"""`rag bench`: ingest, query and vector-search speed, each figure next to the raw component
doing the same work in the same run with the same settings, and their ratio.

- ingest (`ingest.py`): `rag.ingest.ingest` on a JSONL corpus (`corpus.py`) into a fresh
  index, against `SentenceTransformer.encode` alone on the very chunk texts ingest embeds
  (same batch size);
- query (`query.py`): every stage of an answer, timed by calling the functions the pipeline
  calls, then the pipeline's own answer, against FAISS alone on the identical query vector and
  llama.cpp alone (`Llama.create_completion`) on the identical prompt tokens;
- cold start (`startup.py`): a fresh `rag ask` process to its first token, against a fresh
  process that loads llama.cpp alone and reads the same prompt;
- scale (`scale.py`): exact and IVF search at 10k/100k/1M synthetic vectors drawn from a
  Gaussian mixture fitted to real embeddings, each size measured in a fresh process (clean RSS);
- web (`web.py`): article pages served on 127.0.0.1, ingested by URL;
- remote embed (`remote.py`): the corpus ingested through a `rag serve`'s `/v1/embeddings`;
- commit (`commit.py`): adding one article to indexes of 10k/100k/1M chunks, and search over
  20 segments against the same vectors folded into one.

The library never prints: `run_bench` reports progress through a callback and returns a
JSON-ready dict; `format_report` (`report.py`) turns it into the table `rag bench` prints.
The measuring tools every section shares are in `measure.py`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..settings import Settings
from .commit import bench_commit
from .corpus import SAMPLE, default_corpus, generated_article, write_jsonl
from .ingest import bench_ingest
from .measure import Progress, p50_p95, peak_rss_bytes, percentile, reset_peak_rss, rss_bytes
from .query import QUESTIONS, bench_query, shared_prefix
from .remote import bench_remote_embed
from .report import TARGETS, format_report, targets
from .scale import (
    FULL_SIZES,
    QUICK_SIZES,
    Mixture,
    bench_scale,
    fit_mixture,
    neighbour_profile,
    reference_texts,
    sample_mixture,
    scale_point,
)
from .startup import bench_cold_start, bench_server_ask, bench_startup, rag_command
from .web import bench_web

if TYPE_CHECKING:
    import numpy as np

    from ..embedding import Encoder
    from ..generation import LlamaCppGenerator

__all__ = [
    "FULL_SIZES",
    "QUESTIONS",
    "QUICK_SIZES",
    "SAMPLE",
    "TARGETS",
    "BenchOptions",
    "Mixture",
    "Progress",
    "bench_cold_start",
    "bench_commit",
    "bench_ingest",
    "bench_query",
    "bench_remote_embed",
    "bench_scale",
    "bench_server_ask",
    "bench_startup",
    "bench_web",
    "default_corpus",
    "fit_mixture",
    "format_report",
    "generated_article",
    "neighbour_profile",
    "peak_rss_bytes",
    "percentile",
    "rag_command",
    "reference_texts",
    "reset_peak_rss",
    "rss_bytes",
    "run_bench",
    "sample_mixture",
    "scale_point",
    "shared_prefix",
    "targets",
    "write_jsonl",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchOptions:
    """What to measure. None picks the full or the `quick` default.

    Args:
        quick: tiny sizes for tests (under a minute on an idle 2-core machine): ~80 chunks,
            2 questions with k <= 2 and max_tokens <= 16, one 5k scale point, no 1M.
        articles: a JSONL dump to ingest instead of the generated corpus.
        chunks: chunks of generated articles (default 2000, quick 60).
        sample_copies: copies of the bundled sample, as distinct articles (20, quick 2).
        questions: the question set (default `QUESTIONS`, quick its first 2).
        sizes: vector counts of the scale section (10k, 100k, 1M; quick 5k).
        scale_queries: synthetic queries per scale point (200, quick 50).
        fit_texts: reference texts embedded, besides the corpus, to fit the mixture
            (1500, quick 48).
        kv_probes: questions also answered from an empty llama.cpp cache, to measure what
            the shared prompt prefix saves (all; quick 1).
        repeat: ingest / encode-alone pairs, run ABBA; the best of each is reported.
        cold_start: also time fresh processes (`rag ask`, `rag --help`, `rag list`).
        sections: which of ingest, query, startup, scale, web, remote, commit to run (query
            and remote need ingest).
        commit_sizes: index sizes (chunks) of the commit section (10k, 100k, 1M; quick 5k).
        pages: generated article pages the web section serves on 127.0.0.1 (100, quick 10).
    """

    quick: bool = False
    articles: Path | None = None
    chunks: int | None = None
    sample_copies: int | None = None
    questions: tuple[str, ...] | None = None
    sizes: tuple[int, ...] | None = None
    scale_queries: int | None = None
    fit_texts: int | None = None
    kv_probes: int | None = None
    repeat: int = 1
    cold_start: bool = True
    sections: tuple[str, ...] = ("ingest", "query", "startup", "scale", "web", "remote", "commit")
    pages: int | None = None
    commit_sizes: tuple[int, ...] | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def pick(self, name: str, full: Any, quick: Any) -> Any:
        value = getattr(self, name)
        return value if value is not None else (quick if self.quick else full)


def run_bench(
    settings: Settings,
    options: BenchOptions,
    *,
    embedder: Encoder | None = None,
    generator: LlamaCppGenerator | None = None,
    progress: Progress | None = None,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Every section of the bench; returns the JSON-ready result (see `format_report`)."""
    started = time.perf_counter()
    if options.quick:
        settings = settings.with_(top_k=min(settings.top_k, 2), max_tokens=min(settings.max_tokens, 16))
    result = _machine_and_settings(settings, options)
    sections = set(options.sections)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rag-bench-")))
        workdir.mkdir(parents=True, exist_ok=True)
        loads: dict[str, float] = {}
        if embedder is None:
            from ..embedding import load_embedder

            t = time.perf_counter()
            embedder = load_embedder(settings)
            loads["embedder_s"] = round(time.perf_counter() - t, 2)

        index: Path | None = None
        vectors = None
        if "ingest" in sections or "query" in sections:
            corpus, result["corpus"] = _corpus(settings, options, embedder, workdir)
            log.info("bench: ingesting %s", corpus)
            result["ingest"], vectors, index = bench_ingest(
                corpus,
                settings=settings,
                embedder=embedder,
                workdir=workdir,
                repeat=max(1, options.repeat),
                progress=progress,
            )
        questions = list(options.questions or (QUESTIONS[:2] if options.quick else QUESTIONS))
        embed_ms, question_vectors = _embed_questions(embedder, questions)

        prompt: dict[str, Any] = {}
        if "query" in sections and index is not None:
            if generator is None:
                from ..generation import local_generator

                t = time.perf_counter()
                generator = local_generator(settings)
                loads["generator_s"] = round(time.perf_counter() - t, 2)
            log.info("bench: %d questions", len(questions))
            result["query"], prompt = bench_query(
                index,
                settings=settings,
                embedder=embedder,
                generator=generator,
                questions=questions,
                kv_probes=options.pick("kv_probes", None, 1),
                progress=progress,
            )
        result["model_load"] = loads

        if options.cold_start and "startup" in sections and index is not None:
            warm = result.get("query", {}).get("stages", {}).get("ttft_ms", {}).get("p50")
            result |= _fresh_processes(
                index,
                settings=settings,
                questions=questions,
                prompt=prompt,
                warm_ttft_s=warm / 1000 if warm else None,
                workdir=workdir,
                quick=options.quick,
                progress=progress,
            )
        mix = None
        if "scale" in sections or "commit" in sections:
            mix, fitted = _mixture(options, embedder, corpus_vectors=vectors, progress=progress)
            result["scale_vectors"] = fitted
        if "scale" in sections and mix is not None:
            result |= _scale(
                settings,
                options,
                mix,
                question_vectors=question_vectors,
                embed_ms=embed_ms,
                progress=progress,
            )
        if "commit" in sections:
            result["commit"] = bench_commit(
                options.pick("commit_sizes", FULL_SIZES, QUICK_SIZES),
                settings=settings,
                embedder=embedder,
                workdir=workdir,
                mix=mix,
                segments=4 if options.quick else 20,
                runs=2 if options.quick else 5,
                queries=50 if options.quick else 200,
                seed=options.seed,
                progress=progress,
            )
        if "remote" in sections and index is not None:
            if progress:
                progress("Ingest through a remote embedder", 0, 1)
            result["remote_embed"] = bench_remote_embed(
                corpus,
                settings=settings,
                workdir=workdir,
                in_process_chunks_per_s=result["ingest"].get("chunks_per_s"),
            )
        if "web" in sections:
            result["web"] = bench_web(
                options.pick("pages", 100, 10),
                settings=settings.with_(index=workdir / "web-index"),
                embedder=embedder,
                seed=options.seed,
            )
    result["targets"] = targets(result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


# -- the steps of run_bench, each returning its part of the result ----------------------------


def _machine_and_settings(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    """The head of the result: what ran the bench, and with which settings."""
    return {
        "quick": options.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "settings": {
            "embedder": settings.embedder,
            "embed_backend": settings.embed_backend,
            "model": settings.model,
            "batch_size": settings.batch_size,
            "threads": settings.threads,
            "n_ctx": settings.n_ctx,
            "top_k": settings.top_k,
            "max_tokens": settings.max_tokens,
            "temperature": settings.temperature,
            "fusion": settings.fusion,
            "ann_threshold": settings.ann_threshold,
        },
    }


def _corpus(
    settings: Settings, options: BenchOptions, embedder: Encoder, workdir: Path
) -> tuple[Path, dict[str, Any]]:
    """The JSONL file to ingest (the user's, or the default corpus written into `workdir`) and
    the result's note on where it came from."""
    if options.articles is not None:
        corpus = Path(options.articles)
        return corpus, {"source": str(corpus)}
    n_chunks = options.pick("chunks", 2000, 60)
    copies = options.pick("sample_copies", 20, 2)
    articles = default_corpus(
        n_chunks, copies=copies, settings=settings, embedder=embedder, seed=options.seed
    )
    corpus = workdir / "corpus.jsonl"
    write_jsonl(articles, corpus)
    return corpus, {"source": f"{copies} copies of {SAMPLE.name} + generated articles of {n_chunks}+ chunks"}


def _embed_questions(embedder: Encoder, questions: list[str]) -> tuple[list[float], np.ndarray]:
    """Each question's query-embedding time (ms) and, in one batch, their vectors: the scale
    section's retrieval latency and its searches start from them."""
    embed_ms: list[float] = []
    for q in questions:
        t = time.perf_counter()
        embedder.encode_query(q)
        embed_ms.append((time.perf_counter() - t) * 1000)
    return embed_ms, embedder.encode(questions)


def _fresh_processes(
    index: Path,
    *,
    settings: Settings,
    questions: list[str],
    prompt: dict[str, Any],
    warm_ttft_s: float | None,
    workdir: Path,
    quick: bool,
    progress: Progress | None,
) -> dict[str, Any]:
    """`cold_start` (with its `server` part) when the query section left a prompt, and `startup`."""
    out: dict[str, Any] = {}
    if progress:
        progress("Fresh processes", 0, 2)
    if prompt:
        out["cold_start"] = bench_cold_start(
            index, settings=settings, prompt=prompt, workdir=workdir, runs=1 if quick else 2
        )
        out["cold_start"]["server"] = bench_server_ask(
            index,
            settings=settings,
            questions=questions,
            warm_ttft_s=warm_ttft_s,
            runs=1 if quick else 5,
        )
    if progress:
        progress("Fresh processes", 1, 2)
    out["startup"] = bench_startup(index, runs=3 if quick else 5)
    if progress:
        progress("Fresh processes", 2, 2)
    return out


def _mixture(
    options: BenchOptions,
    embedder: Encoder,
    *,
    corpus_vectors: np.ndarray | None,
    progress: Progress | None,
) -> tuple[Mixture, dict[str, Any]]:
    """The mixture the scale and commit sections draw vectors from, fitted to reference texts
    and the corpus, and `scale_vectors`: how close its samples come to the real vectors."""
    import numpy as np

    n_fit = options.pick("fit_texts", 1500, 48)
    ref = reference_texts(n_fit)

    def ref_progress(done: int, total: int) -> None:
        if progress:
            progress("Embedding reference texts", done, total)

    ref_progress(0, len(ref))
    parts = [embedder.encode(ref, progress=ref_progress)]
    if corpus_vectors is not None:
        parts.append(corpus_vectors)
    real = np.vstack([p for p in parts if len(p)])
    t = time.perf_counter()
    mix = fit_mixture(real, components=16 if not options.quick else 4, seed=options.seed)
    fit_s = time.perf_counter() - t
    synthetic = sample_mixture(mix, min(2000, len(real)), seed=options.seed + 1)
    return mix, {
        "method": "full-covariance Gaussian mixture fitted to real embeddings, sampled, normalised",
        "components": len(mix.weights),
        "fitted_on": mix.fitted_on,
        "fit_s": round(fit_s, 2),
        "real_profile": neighbour_profile(real),
        "synthetic_profile": neighbour_profile(synthetic),
    }


def _scale(
    settings: Settings,
    options: BenchOptions,
    mix: Mixture,
    *,
    question_vectors: np.ndarray,
    embed_ms: list[float],
    progress: Progress | None,
) -> dict[str, Any]:
    """`scale` and `scale_query_embedding_ms`."""
    out: dict[str, Any] = {}
    sizes = options.pick("sizes", FULL_SIZES, QUICK_SIZES)
    out["scale"] = bench_scale(
        mix,
        sizes,
        queries=options.pick("scale_queries", 200, 50),
        question_vectors=question_vectors,
        embed_p50_ms=percentile(embed_ms, 0.5),
        settings=settings,
        seed=options.seed,
        progress=progress,
    )
    out["scale_query_embedding_ms"] = p50_p95(embed_ms)
    return out
