"""The vector index of a segment: exact search while small, IVF with fp16 scalar quantisation
past `ann_threshold` vectors, with `nprobe` tuned at build time for recall@10 against exact
search."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

FLAT = "flat"
IVF = "ivf_sqfp16"
# nprobe is tuned on stored vectors used as queries; real questions need a little more than
# that proxy (measured: 0.958 recall for questions where the proxy said 0.977), so aim higher.
ANN_TARGET_RECALL = 0.97
_NPROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def default_ann_threshold() -> int:
    from ..settings import Settings

    return int(Settings.ann_threshold)


def flat_index(dimension: int) -> Any:
    """An empty exact inner-product index with explicit 64-bit ids."""
    import faiss

    return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))


def ann_nlist(n: int) -> int:
    """Inverted lists for `n` vectors: the power of two nearest sqrt(n), lowered until
    every list has at least 39 training points (FAISS's minimum for k-means)."""
    nlist = 1 << max(0, round(math.log2(max(1.0, math.sqrt(n)))))
    while nlist > 1 and nlist * 39 > n:
        nlist //= 2
    return nlist


def all_vectors(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of every vector in a flat or IVF index, sorted by id."""
    import faiss
    import numpy as np

    n = int(index.ntotal)
    d = int(index.d)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, d), dtype=np.float32)
    if isinstance(index, faiss.IndexIDMap2):
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        vecs = index.index.reconstruct_n(0, n)
    else:
        ivf = faiss.extract_index_ivf(index)
        lists = ivf.invlists
        parts = []
        for lst in range(ivf.nlist):
            size = lists.list_size(lst)
            if size:
                parts.append(faiss.rev_swig_ptr(lists.get_ids(lst), size).copy())
        ids = np.concatenate(parts).astype(np.int64)
        ids.sort()
        vecs = index.reconstruct_batch(ids)
        return ids, np.ascontiguousarray(vecs, dtype=np.float32)
    order = np.argsort(ids, kind="stable")
    return ids[order], np.ascontiguousarray(vecs[order], dtype=np.float32)


def _self_recall(
    index: Any, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
) -> Callable[[int], float]:
    """recall@k at a given nprobe, with stored vectors `queries` (positions) as questions:
    each query's own vector is left out, and a hit tied with the k-th exact score counts."""
    import faiss
    import numpy as np

    xq = vectors[queries]
    scores, nn = faiss.knn(xq, vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    kth = np.array([row_s[row_n != q][k - 1] for row_s, row_n, q in zip(scores, nn, queries, strict=True)])
    ivf = faiss.extract_index_ivf(index)

    def recall(nprobe: int) -> float:
        ivf.nprobe = nprobe
        _, found = index.search(xq, k + 1)
        hits = 0
        for i, q in enumerate(queries):
            row = found[i][(found[i] >= 0) & (found[i] != ids[q])][:k]
            pos = np.searchsorted(ids, row)
            sims = vectors[pos] @ xq[i]
            hits += int(np.count_nonzero(sims >= kth[i] - 1e-5))
        return hits / (k * len(queries))

    return recall


def build_ann(
    vectors: np.ndarray,
    ids: np.ndarray,
    *,
    target_recall: float = ANN_TARGET_RECALL,
    seed: int = 0,
    tune_queries: int = 256,
) -> tuple[Any, dict[str, Any]]:
    """An IVF index over `vectors` (normalised, float32) under `ids` (sorted), with nprobe
    tuned for `target_recall` at k=10; returns the index and its manifest parameters."""
    import faiss
    import numpy as np

    start = time.perf_counter()
    n, d = vectors.shape
    nlist = ann_nlist(n)
    factory = f"IVF{nlist},SQfp16"
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    rng = np.random.default_rng(seed)
    # 64 points per list train k-means as well as all of them, at a fraction of the time.
    train = vectors if n <= 64 * nlist else vectors[np.sort(rng.choice(n, 64 * nlist, replace=False))]
    index.train(train)
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct and remove by chunk id
    index.add_with_ids(vectors, ids)
    queries = np.sort(rng.choice(n, min(tune_queries, n), replace=False))
    k = min(10, n - 1)
    nprobe, recall = nlist, 1.0
    if k > 0:
        measure = _self_recall(index, vectors, ids, queries, k)
        for candidate in (p for p in _NPROBES if p < nlist):
            r = measure(candidate)
            if r >= target_recall:
                nprobe, recall = candidate, r
                break
    ivf.nprobe = nprobe
    params = {
        "factory": factory,
        "nlist": nlist,
        "nprobe": nprobe,
        "trained_on": n,
        "tuned_recall_at_10": round(recall, 4),
        "target_recall_at_10": target_recall,
        "build_s": round(time.perf_counter() - start, 2),
    }
    log.info("built %s over %d vectors: nprobe %d, recall@10 %.3f", factory, n, nprobe, recall)
    return index, params


def coarse_key(index: Any) -> str:
    """What identifies an IVF index's coarse quantizer (its centroids): segments with the same
    key share their lists' meaning and are searched as one."""
    import hashlib

    import faiss

    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    centroids = quantizer.reconstruct_n(0, quantizer.ntotal)
    return hashlib.sha256(centroids.tobytes()).hexdigest()[:16]


def ivf_sharing(
    quantizer: Any, params: dict[str, Any], vectors: np.ndarray, ids: np.ndarray
) -> tuple[Any, dict[str, Any]]:
    """An IVF index over `vectors` on an existing, trained coarse quantizer (another
    segment's): nothing is trained, and the two are searched as one (`stacked`)."""
    import faiss

    nlist = int(quantizer.ntotal)
    own = faiss.clone_index(quantizer)
    index = faiss.IndexIVFScalarQuantizer(
        own, quantizer.d, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    # The index frees its quantizer: Python must not free it too.
    own.this.disown()
    index.own_fields = True
    index.is_trained = True
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    if len(ids):
        index.add_with_ids(vectors, ids)
    index.nprobe = int(params["nprobe"])
    shared = {
        k: params[k]
        for k in ("factory", "nlist", "nprobe", "trained_on", "tuned_recall_at_10")
        if k in params
    }
    return index, {**shared, "coarse_shared": True}


def together(indexes: list[Any]) -> Any:
    """One in-memory IVF index holding copies of the lists of several that share a coarse
    quantizer (the small segments of an index, searched in one scan)."""
    import faiss

    first = faiss.extract_index_ivf(indexes[0])
    quantizer = faiss.downcast_index(first.quantizer)
    empty = quantizer.reconstruct_n(0, 0).reshape(0, first.d)
    combined, _ = ivf_sharing(quantizer, {"nprobe": first.nprobe}, empty, empty[:, 0].astype("int64"))
    combined.set_direct_map_type(faiss.DirectMap.NoMap)  # searched only, never reconstructed
    for index in indexes:
        copy = faiss.clone_index(index)
        copy.set_direct_map_type(faiss.DirectMap.NoMap)
        combined.merge_from(copy, 0)
    return combined


# Segments share a coarse quantizer while they hold no more than this many times the vectors it
# was trained on: its lists are then at most this much fuller than the ones nprobe was tuned on.
SHARE_SLACK = 1.5


def _fits(params: dict[str, Any], n: int) -> bool:
    """Whether `n` more vectors may share the quantizer of these parameters (see SHARE_SLACK);
    never when the vectors already on it are not known (`shared_rows` None)."""
    trained = int(params.get("trained_on", 0))
    shared = params.get("shared_rows")
    return shared is not None and 0 < n <= trained and int(shared) + n <= SHARE_SLACK * trained


def _partitions_well(index: Any, vectors: np.ndarray, ids: np.ndarray, target: float, seed: int = 0) -> float:
    """recall@10 of a shared-quantizer index over its own vectors at its nprobe (as `build_ann`
    tunes it): a quantizer trained on other articles can cut new topics badly."""
    import faiss
    import numpy as np

    n = len(ids)
    queries = np.sort(np.random.default_rng(seed).choice(n, min(256, n), replace=False))
    return _self_recall(index, vectors, ids, queries, min(10, n - 1))(
        int(faiss.extract_index_ivf(index).nprobe)
    )


def vector_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    dimension: int,
    threshold: int,
    *,
    reference: tuple[Any, dict[str, Any]] | None = None,
) -> tuple[Any, str, dict[str, Any]]:
    """The index a segment of these vectors (ids sorted) gets, with its kind and manifest
    parameters. Built on the index's `reference` coarse quantizer (with its parameters) when
    the index has one and the segment is under `threshold` vectors, or no larger than what
    the quantizer was trained on while the segments sharing it (`shared_rows` in its
    parameters) stay within SHARE_SLACK times that: it is then searched with them as one
    index (from `threshold` on, only when its recall@10 over its own vectors at the shared
    nprobe reaches ANN_TARGET_RECALL: new topics can fall badly on old lists). Else exact
    under `threshold`, and IVF trained on its own vectors from it
    (measured at 1M in 20 parts: a quantizer trained on one part and shared by all scans 20x
    the vectors per list, 1.5x slower than each part's own; two parts of 800k and 200k, each
    on its own quantizer, 1.31x one index; on the larger's, as one)."""
    import numpy as np

    n = len(ids)
    if reference is not None and (n < threshold or _fits(reference[1], n)):
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        index, params = ivf_sharing(reference[0], reference[1], x, ids)
        if n < threshold:
            return index, IVF, {**params, "ann_threshold": threshold}
        recall = _partitions_well(index, x, ids, ANN_TARGET_RECALL)
        if recall >= ANN_TARGET_RECALL:
            return index, IVF, {**params, "tuned_recall_at_10": round(recall, 4), "ann_threshold": threshold}
        log.info("%d vectors on the index's quantizer: recall@10 %.3f; training their own", n, recall)
    if n < threshold or n < 2:
        index = flat_index(dimension)
        if n:
            index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        return index, FLAT, {"ann_threshold": threshold}
    log.info("%d vectors (ann_threshold %d): building an IVF index", n, threshold)
    index, params = build_ann(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    return index, IVF, {**params, "ann_threshold": threshold}
