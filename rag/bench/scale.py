"""The SCALE section: exact and IVF search at 10k/100k/1M synthetic vectors, each size in a fresh
process (clean RSS). The vectors are drawn from a Gaussian mixture fitted to real embeddings:
of the corpus and of reference texts (the standard library's docstrings)."""

from __future__ import annotations

import ast
import re
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..settings import Settings
from .measure import Progress, p50_p95, peak_rss_bytes, percentile, ratio_of, reset_peak_rss, rss_bytes

if TYPE_CHECKING:
    import numpy as np

FULL_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (5_000,)


def reference_texts(limit: int) -> list[str]:
    """Real English paragraphs that every Python install has: the docstrings of the standard
    library, read with `ast` (nothing imported). Used to fit the scale section's mixture."""
    if limit <= 0:
        return []
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[str] = []
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                for para in re.split(r"\n\s*\n", doc or ""):
                    para = " ".join(para.split())
                    if len(para) > 60 and not para.startswith((">>>", "$", "{", "[")):
                        found.append(para)
    step = max(1, len(found) // limit)
    return found[::step][:limit]


# -- synthetic vectors -----------------------------------------------------------------------


@dataclass(frozen=True)
class Mixture:
    """A Gaussian mixture over embedding space (full covariances, as Cholesky factors)."""

    weights: np.ndarray
    means: np.ndarray
    chols: np.ndarray
    fitted_on: int


def fit_mixture(vectors: np.ndarray, *, components: int, seed: int = 0) -> Mixture:
    """Fit a full-covariance Gaussian mixture to real embeddings (scikit-learn, which
    sentence-transformers depends on). Full covariances keep the anisotropy that makes
    real neighbourhoods: diagonal ones make ANN search look easier than it is."""
    import numpy as np
    from sklearn.mixture import GaussianMixture

    x = np.unique(np.asarray(vectors, dtype=np.float64), axis=0)
    k = max(1, min(components, len(x) // 20))
    gm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, max_iter=100, random_state=seed).fit(x)
    return Mixture(
        weights=np.asarray(gm.weights_, dtype=np.float64),
        means=gm.means_.astype(np.float32),
        chols=np.linalg.cholesky(gm.covariances_).astype(np.float32),
        fitted_on=len(x),
    )


def sample_mixture(mix: Mixture, n: int, *, seed: int) -> np.ndarray:
    """`n` unit vectors drawn from the mixture, float32, in blocks (no float64 copy)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    comp = rng.choice(len(mix.weights), size=n, p=mix.weights / mix.weights.sum())
    d = mix.means.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    for c in range(len(mix.weights)):
        idx = np.flatnonzero(comp == c)
        for lo in range(0, len(idx), 65536):
            part = idx[lo : lo + 65536]
            z = rng.standard_normal((len(part), d), dtype=np.float32)
            out[part] = z @ mix.chols[c].T + mix.means[c]
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def neighbour_profile(x: np.ndarray, n: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean cosine, median top-1 and top-10 neighbour cosine of up to `n` vectors: how the
    synthetic vectors compare with the real ones they were fitted on."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = x[rng.choice(len(x), min(n, len(x)), replace=False)] if len(x) > n else x
    g = x @ x.T
    np.fill_diagonal(g, -np.inf)
    top = -np.sort(-g, axis=1)
    m = len(x)
    mean = (float(x.sum(0) @ x.sum(0)) - m) / max(1, m * (m - 1))
    return {
        "mean_cos": round(mean, 3),
        "top1_cos": round(float(np.median(top[:, 0])), 3),
        "top10_cos": round(float(np.median(top[:, min(9, m - 2)])), 3) if m > 2 else 0.0,
    }


# -- search at each size ---------------------------------------------------------------------


def scale_point(
    mix: Mixture, n: int, *, queries: int, question_vectors: np.ndarray, pool: int, seed: int
) -> dict[str, Any]:
    """Exact and IVF search over `n` mixture vectors. Run it in a fresh process: the RSS
    deltas are then the indexes' own."""
    import faiss
    import numpy as np

    from ..store import build_ann, flat_index

    xb = sample_mixture(mix, n, seed=seed + n)
    xq = sample_mixture(mix, queries, seed=seed + 7)
    ids = np.arange(n, dtype=np.int64)
    _, truth = faiss.knn(xq, xb, 10, metric=faiss.METRIC_INNER_PRODUCT)
    qv = np.ascontiguousarray(question_vectors, dtype=np.float32)

    def latencies(index: Any, vecs: np.ndarray, limit: int) -> list[float]:
        out = []
        for v in vecs[:limit]:
            t = time.perf_counter()
            index.search(v.reshape(1, -1), pool)
            out.append((time.perf_counter() - t) * 1000)
        return out

    base = rss_bytes()
    peak_ok = reset_peak_rss()
    t = time.perf_counter()
    ann, params = build_ann(xb, ids)
    ann_build = time.perf_counter() - t
    ann_rss = rss_bytes() - base
    ann_peak = peak_rss_bytes() - base if peak_ok else None
    _, found = ann.search(xq, 10)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]))
    ann_lat = latencies(ann, xq, queries)
    ann_q = latencies(ann, qv, len(qv))
    ann_phase_peak = peak_rss_bytes() if peak_ok else None

    base = rss_bytes()
    t = time.perf_counter()
    flat = flat_index(xb.shape[1])
    flat.add_with_ids(xb, ids)
    flat_build = time.perf_counter() - t
    flat_rss = rss_bytes() - base
    flat_limit = max(10, min(queries, int(2e7 / n)))  # exact search at 1M is slow: fewer queries
    flat_lat = latencies(flat, xq, flat_limit)
    flat_q = latencies(flat, qv, min(len(qv), flat_limit))
    mib = 2**20
    return {
        "vectors": n,
        "dimension": int(xb.shape[1]),
        "queries": queries,
        "ann": {
            **params,
            "build_s": round(ann_build, 2),
            "rss_mib": round(ann_rss / mib, 1),
            "build_peak_mib": round(ann_peak / mib, 1) if ann_peak is not None else None,
            "search_ms": p50_p95(ann_lat, 3),
            "question_search_ms": p50_p95(ann_q, 3),
            "recall_at_10": round(recall, 4),
        },
        "exact": {
            "build_s": round(flat_build, 2),
            "rss_mib": round(flat_rss / mib, 1),
            "search_ms": p50_p95(flat_lat, 3),
            "question_search_ms": p50_p95(flat_q, 3),
            "queries_timed": flat_limit,
        },
        "search_speedup_p50": ratio_of(percentile(flat_lat, 0.5), percentile(ann_lat, 0.5)),
        "input_mib": round(xb.nbytes / mib, 1),
        # The process at its largest while it held the input vectors and built, tuned and
        # searched the IVF index: what a migration at this size needs (exact index not yet built).
        "ann_phase_peak_rss_mib": round(ann_phase_peak / mib, 1) if ann_phase_peak else None,
        "process_peak_rss_mib": round(peak_rss_bytes() / mib, 1),
    }


def bench_scale(
    mix: Mixture,
    sizes: Sequence[int],
    *,
    queries: int,
    question_vectors: np.ndarray,
    embed_p50_ms: float,
    settings: Settings,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """`scale_point` at each size, each in a fresh process, plus the retrieval latency the
    store would give there (its index type at that size, after the query embedding)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = max(4 * settings.top_k, 20)
    out = []
    for i, n in enumerate(sizes):
        if progress:
            progress(f"Scale {n:,} vectors", i, len(sizes))
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
            point = ex.submit(
                scale_point,
                mix,
                n,
                queries=queries,
                question_vectors=question_vectors,
                pool=pool,
                seed=seed,
            ).result()
        uses = "ann" if n >= settings.ann_threshold else "exact"
        point["store_uses"] = uses
        point["ann_threshold"] = settings.ann_threshold
        point["retrieval_p50_ms"] = round(embed_p50_ms + point[uses]["question_search_ms"]["p50"], 2)
        out.append(point)
        if progress:
            progress(f"Scale {n:,} vectors", i + 1, len(sizes))
    return out
