"""The index folder: FAISS vectors + SQLite chunks, committed atomically by generation.

Layout::

    DIR/CURRENT             "gen-000007 <sha256 of its manifest>", replaced atomically
    DIR/gen-000007/         the live generation: write-once, never modified
        vectors.faiss       inner-product search, ids = chunk ids: exact (IndexIDMap2 over
                            IndexFlatIP) while small, IVF past `ann_threshold` vectors
        chunks.sqlite       articles (with full text) and chunk offsets; each article's
                            MinHash signature; its syndicated copies (`rag.dedup`), stored
                            but not indexed; feed state (`rag.feeds`)
        manifest.json       what built it, counts, and the checksums of both files
    DIR/gen-000006/         the previous generation, kept until the next commit
    DIR/.lock               held by the one writer

A writer builds the next generation in a fresh folder, fsyncs it, then renames a new
CURRENT over the old one. A crash at any moment leaves CURRENT pointing at a complete,
checksummed generation.

The vector index follows the corpus: exact search below `ann_threshold` vectors, an
inverted-file index with fp16 scalar quantisation (`IVF{nlist},SQfp16`) from there on, with
`nprobe` tuned at build time for recall@10 against exact search. A commit that crosses the
threshold rebuilds the index from the stored vectors under the same chunk ids; the type and
its parameters are recorded in the manifest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, EmbedderMismatch, IndexCorrupt, IndexLocked, IndexNotFound
from .filters import Filters, article_date
from .types import Article, ArticleInfo, Chunk, Copy

# Lowest cosine between two backends' vectors of the probe texts for one to search the
# other's index: measured 1.0000 for torch and OpenVINO on the same weights.
AGREEMENT = 0.99

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
VECTORS = "vectors.faiss"
CHUNKS = "chunks.sqlite"
MANIFEST = "manifest.json"
CURRENT = "CURRENT"

FLAT = "flat"
IVF = "ivf_sqfp16"
# nprobe is tuned on stored vectors used as queries; real questions need a little more than
# that proxy (measured: 0.958 recall for questions where the proxy said 0.977), so aim higher.
ANN_TARGET_RECALL = 0.97
# Retrain (more lists) once the corpus has grown this many times past the training size; go
# back to exact search below half the threshold (no flapping around it).
ANN_RETRAIN_GROWTH = 4
_NPROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)

# The keyword index's tokenizer: the lexical evidence of `rag.support` reads text through
# the same one (`terms`), so both count the same words.
TOKENIZER = "porter unicode61 remove_diacritics 2"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS articles (
    id TEXT PRIMARY KEY, title TEXT, date TEXT, url TEXT, author TEXT, source TEXT,
    path TEXT, hash TEXT NOT NULL, text TEXT NOT NULL, added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, article_id TEXT NOT NULL REFERENCES articles(id),
    ordinal INTEGER NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_article ON chunks(article_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    text, tokenize = '{TOKENIZER}'
);
CREATE TABLE IF NOT EXISTS signatures (article_id TEXT PRIMARY KEY, sig BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS copies (
    id TEXT PRIMARY KEY, of_id TEXT NOT NULL, title TEXT, date TEXT, url TEXT, author TEXT,
    source TEXT, path TEXT, hash TEXT NOT NULL, text TEXT NOT NULL, similarity REAL NOT NULL,
    added_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS copies_of ON copies(of_id);
"""

# Words too common to help a keyword match; the dense side still sees them.
STOPWORDS = frozenset(
    """a an and are as at be been but by can could did do does for from had has have he her his
    how i if in into is it its may me might my not of on or our she should so than that the their
    them then there these they this those to us was we were what when where which who whom whose
    why will with would you your""".split()
)
_WORD = re.compile(r"\w+", re.UNICODE)


def keyword_query(text: str) -> str:
    """An FTS5 OR-query of the distinct non-stopword words of `text` (quoted: no syntax)."""
    words: list[str] = []
    for w in _WORD.findall(text.lower()):
        if w not in STOPWORDS and w not in words:
            words.append(w)
    return " OR ".join(f'"{w}"' for w in words[:64])


_tokenizer = threading.local()


def terms(texts: Sequence[str]) -> list[list[str]]:
    """Each text as the keyword index's terms, in order (lower case, stemmed, no diacritics):
    FTS5 itself tokenises them, in a private in-memory table, so a word counts here exactly
    when the keyword search would match it."""
    db = getattr(_tokenizer, "db", None)
    if db is None:
        db = _tokenizer.db = sqlite3.connect(":memory:")
        db.execute(f"CREATE VIRTUAL TABLE t USING fts5(text, tokenize = '{TOKENIZER}')")
        db.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, instance)")
    out: list[list[str]] = [[] for _ in texts]
    with db:
        db.executemany("INSERT INTO t(rowid, text) VALUES (?, ?)", enumerate(texts))
        for term, doc in db.execute("SELECT term, doc FROM v ORDER BY doc, offset"):
            out[doc].append(term)
        db.execute("DELETE FROM t")
    return out


STOP_TERMS = frozenset(t for ts in terms(sorted(STOPWORDS)) for t in ts)


@dataclass(frozen=True)
class ChunkRow:
    """A stored chunk with its article's metadata."""

    id: int
    article_id: str
    ordinal: int
    start: int
    end: int
    text: str
    title: str
    date: str
    url: str
    author: str
    source: str


def article_hash(a: Article) -> str:
    """Content hash: unchanged articles are skipped on re-ingest, changed ones replaced."""
    payload = json.dumps([a.text, a.title, a.date, a.url, a.author, a.source], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _stored(a: Article, digest: str) -> tuple[str, ...]:
    """An article's columns after its id, as both `articles` and `copies` keep them."""
    return (a.title, a.date, a.url, a.author, a.source, a.path, digest, a.text)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def _recover_hint(root: Path) -> str:
    return (
        f"run `rag recover --index {root}` to go back to the previous generation, "
        f"or rebuild it with `rag ingest --rebuild --index {root} PATH...`"
    )


def read_pointer(root: Path) -> tuple[str, str]:
    """(generation folder name, manifest sha256) from CURRENT."""
    pointer = root / CURRENT
    if not pointer.exists():
        if not root.exists() or not any(root.glob("gen-*")):
            raise IndexNotFound(f"no index at {root}; build one with `rag ingest --index {root} PATH...`")
        raise IndexCorrupt(f"index {root} has no CURRENT file; {_recover_hint(root)}")
    parts = pointer.read_text(encoding="ascii", errors="replace").split()
    # A cut-off pointer must be named as the damaged file, not blamed on the manifest.
    if len(parts) != 2 or not parts[0].startswith("gen-") or not re.fullmatch(r"[0-9a-f]{64}", parts[1]):
        raise IndexCorrupt(f"{pointer} is damaged ({' '.join(parts)[:60]!r}); {_recover_hint(root)}")
    return parts[0], parts[1]


def list_generations(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("gen-*") if p.is_dir() and not p.name.endswith(".tmp"))


def verify_generation(root: Path, gen: str, manifest_sha: str | None) -> dict[str, Any]:
    """The manifest of `gen` after checking it and every file it lists."""
    folder = root / gen
    mpath = folder / MANIFEST
    if not mpath.exists():
        raise IndexCorrupt(f"{mpath} is missing; {_recover_hint(root)}")
    raw = mpath.read_bytes()
    if manifest_sha is not None and hashlib.sha256(raw).hexdigest() != manifest_sha:
        raise IndexCorrupt(f"{mpath} fails its checksum; {_recover_hint(root)}")
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise IndexCorrupt(f"{mpath} cannot be parsed; {_recover_hint(root)}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexCorrupt(
            f"{root} has index format {manifest.get('format_version')!r}, this version reads "
            f"{FORMAT_VERSION}; rebuild it with `rag ingest --rebuild --index {root} PATH...`"
        )
    for name, info in files.items():
        path = folder / name
        if not path.exists():
            raise IndexCorrupt(f"{path} is missing; {_recover_hint(root)}")
        if path.stat().st_size != info["bytes"] or _sha256(path) != info["sha256"]:
            raise IndexCorrupt(f"{path} fails its checksum (damaged); {_recover_hint(root)}")
    return manifest


def default_ann_threshold() -> int:
    from .settings import Settings

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


def fit_index(
    index: Any, kind: str, params: dict[str, Any], threshold: int
) -> tuple[Any, str, dict[str, Any]]:
    """The index a generation of this size should have: the same one, or rebuilt from its
    stored vectors (same ids) when the size crossed the threshold or outgrew the training."""
    n = int(index.ntotal)
    if kind == FLAT and n < threshold:
        return index, FLAT, {"ann_threshold": threshold}
    if kind != FLAT and n >= threshold // 2 and n < ANN_RETRAIN_GROWTH * int(params.get("trained_on", 0)):
        return index, kind, {**params, "ann_threshold": threshold}
    ids, vectors = all_vectors(index)
    if n < threshold // 2 or n < 2:
        log.info("%d vectors, under half of ann_threshold %d: back to exact search", n, threshold)
        flat = flat_index(int(index.d))
        if n:
            flat.add_with_ids(vectors, ids)
        return flat, FLAT, {"ann_threshold": threshold}
    log.info("%d vectors (ann_threshold %d): building an IVF index", n, threshold)
    ann, ann_params = build_ann(vectors, ids)
    return ann, IVF, {**ann_params, "ann_threshold": threshold}


class Snapshot:
    """One committed generation, opened read-only: safe to search while a writer commits."""

    def __init__(self, root: Path, gen: str, manifest: dict[str, Any]) -> None:
        import faiss

        self.root = root
        self.generation = gen
        self.manifest = manifest
        folder = root / gen
        try:
            self.index = faiss.read_index(str(folder / VECTORS))
        except RuntimeError as e:
            raise IndexCorrupt(f"{folder / VECTORS} cannot be read ({e}); {_recover_hint(root)}") from None
        self.index_type: str = manifest.get("index_type", FLAT)
        self.index_params: dict[str, Any] = dict(manifest.get("index_params") or {})
        if self.index_type != FLAT:
            faiss.extract_index_ivf(self.index).nprobe = int(self.index_params["nprobe"])
        self._dates: dict[str, date | None] = {}
        self._any_dated: bool | None = None
        uri = f"file:{folder / CHUNKS}?mode=ro&immutable=1"
        # check_same_thread=False: the UI searches from worker threads; the file is immutable.
        self.db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        n_chunks = self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        # The keyword index's term counts, for rarity weights (temp: the file stays untouched).
        self.db.execute("CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, chunks_fts, row)")
        if n_chunks != self.index.ntotal:
            raise IndexCorrupt(
                f"{folder}: {self.index.ntotal} vectors but {n_chunks} chunks; {_recover_hint(root)}"
            )
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        # Generations written before copies were kept have neither table: none to read.
        self._has_copies = "copies" in tables

    @classmethod
    def open(cls, root: str | os.PathLike[str], *, verify: bool = True) -> Snapshot:
        root = Path(root)
        gen, sha = read_pointer(root)
        if verify:
            manifest = verify_generation(root, gen, sha)
        else:
            manifest = json.loads((root / gen / MANIFEST).read_text())
        return cls(root, gen, manifest)

    def close(self) -> None:
        self.db.close()

    @property
    def embedder(self) -> dict[str, Any]:
        return dict(self.manifest["embedder"])

    def check_embedder(
        self,
        name: str,
        dimension: int,
        *,
        backend: str = "torch",
        agreement: Callable[[dict[str, Any]], float] | None = None,
    ) -> None:
        """Raise unless vectors made by this embedder can be searched against the index's:
        the same model, and with another backend, vectors of the index's probe texts within
        AGREEMENT cosine of the recorded ones."""
        built = self.manifest["embedder"]
        if built["name"] != name or built["dimension"] != dimension:
            raise EmbedderMismatch(
                f"index {self.root} was built with embedder {built['name']!r} "
                f"(dimension {built['dimension']}), not {name!r} (dimension {dimension}); "
                f"use --embedder {built['name']} or rebuild with `rag ingest --rebuild`"
            )
        made_by = built.get("backend", "torch")
        if backend == made_by:
            return
        probe = built.get("probe")
        if not probe:
            raise EmbedderMismatch(
                f"index {self.root} records no probe of its vectors (built before embed "
                f"backends were recorded, by {made_by!r}), so {backend!r} cannot be checked "
                f"against them; use --embed-backend {made_by} or rebuild with `rag ingest --rebuild`"
            )
        cosine = agreement(probe) if agreement is not None else 0.0
        if cosine < AGREEMENT:
            raise EmbedderMismatch(
                f"index {self.root} was built with embed backend {made_by!r}, whose vectors "
                f"{backend!r} does not reproduce (probe cosine {cosine:.4f} < {AGREEMENT}); "
                f"use --embed-backend {made_by} or rebuild with `rag ingest --rebuild`"
            )

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(
        self, vector: np.ndarray, k: int, *, allowed: Sequence[int] | None = None
    ) -> list[tuple[int, float]]:
        """Top-k chunk ids by inner product; `allowed` restricts them to those chunk ids."""
        import faiss
        import numpy as np

        if self.index.ntotal == 0 or (allowed is not None and len(allowed) == 0):
            return []
        q = np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32)
        k = min(k, int(self.index.ntotal))
        if allowed is None:
            scores, ids = self.index.search(q, k)
        else:
            sel = faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64))
            if self.index_type == FLAT:
                params = faiss.SearchParameters(sel=sel)
            else:
                # A filter can leave the probed lists empty: scan them all (still exact
                # for the allowed vectors, and a filtered search is rarely large).
                params = faiss.SearchParametersIVF(sel=sel, nprobe=faiss.extract_index_ivf(self.index).nlist)
            scores, ids = self.index.search(q, min(k, len(allowed)), params=params)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of chunk ids (IndexIDMap2 keeps the id map for this, the IVF
        index a hash-table direct map; IVF vectors come back from fp16)."""
        import numpy as np

        return np.vstack([self.index.reconstruct(int(i)) for i in ids])

    def keyword_search(
        self, query: str, k: int, *, allowed: Sequence[int] | None = None
    ) -> list[tuple[int, float]]:
        """Top-k chunks by BM25 (SQLite FTS5); scores are positive, higher is better.
        `allowed` restricts them to those chunk ids."""
        match = keyword_query(query)
        if not match or (allowed is not None and len(allowed) == 0):
            return []
        if allowed is None:
            sql, args = "", ()
        else:
            sql, args = " AND rowid IN (SELECT value FROM json_each(?))", (json.dumps(list(allowed)),)
        rows = self.db.execute(
            f"SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ?{sql} "
            "ORDER BY bm25(chunks_fts) LIMIT ?",
            (match, *args, k),
        ).fetchall()
        return [(int(i), -float(s)) for i, s in rows]

    def document_frequencies(self, words: Sequence[str]) -> dict[str, int]:
        """How many chunks hold each of these terms (as `terms` makes them); 0 if none."""
        wanted = sorted(set(words))
        rows = self.db.execute(
            "SELECT term, doc FROM temp.vocab WHERE term IN (SELECT value FROM json_each(?))",
            (json.dumps(wanted),),
        ).fetchall()
        found = dict(rows)
        return {w: int(found.get(w, 0)) for w in wanted}

    def filter_chunks(self, filters: Filters) -> list[int]:
        """The chunk ids of the articles that pass `filters`."""
        where: list[str] = []
        args: list[Any] = []
        if filters.ids:
            where.append("id IN (SELECT value FROM json_each(?))")
            args.append(json.dumps(list(filters.ids)))
        if filters.source:
            where.append("lower(source) IN (SELECT lower(value) FROM json_each(?))")
            args.append(json.dumps(list(filters.source)))
        if filters.author:
            byline = " OR ".join("instr(lower(author), lower(?)) > 0" for _ in filters.author)
            where.append(f"({byline})")
            args.extend(filters.author)
        sql = "SELECT id, date FROM articles" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self.db.execute(sql, args).fetchall()
        lo, hi = filters.date_range
        if lo or hi:
            rows = [(i, d) for i, d in rows if self._in_range(i, d, lo, hi)]
        ids = [i for i, _ in rows]
        return [
            int(r[0])
            for r in self.db.execute(
                "SELECT id FROM chunks WHERE article_id IN (SELECT value FROM json_each(?)) ORDER BY id",
                (json.dumps(ids),),
            )
        ]

    def dated(self) -> bool:
        """Whether any article has a readable date (a question's time can filter them)."""
        if self._any_dated is None:
            rows = self.db.execute("SELECT id, date FROM articles WHERE date != ''").fetchall()
            self._any_dated = any(self._in_range(i, d, None, None) for i, d in rows)
        return self._any_dated

    def _in_range(self, article_id: str, raw: str, lo: date | None, hi: date | None) -> bool:
        # Parsed once per snapshot: the generation never changes under it.
        if article_id not in self._dates:
            self._dates[article_id] = article_date(raw)
        day = self._dates[article_id]
        return day is not None and (lo is None or day >= lo) and (hi is None or day <= hi)

    def chunks(self, ids: Sequence[int]) -> list[ChunkRow]:
        """Rows for `ids`, in the same order."""
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            'SELECT c.id, c.article_id, c.ordinal, c.start, c."end", '
            'substr(a.text, c.start + 1, c."end" - c.start), a.title, a.date, a.url, '
            f"a.author, a.source FROM chunks c JOIN articles a ON a.id = c.article_id "
            f"WHERE c.id IN ({marks})",
            list(ids),
        ).fetchall()
        by_id = {r[0]: ChunkRow(*r) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def articles(self) -> list[ArticleInfo]:
        copies = "(SELECT COUNT(*) FROM copies k WHERE k.of_id = a.id)" if self._has_copies else "0"
        rows = self.db.execute(
            "SELECT a.id, a.title, a.date, a.url, a.author, a.source, a.path, "
            f"(SELECT COUNT(*) FROM chunks c WHERE c.article_id = a.id), length(a.text), {copies} "
            "FROM articles a ORDER BY a.added_at, a.id"
        ).fetchall()
        return [ArticleInfo(*r) for r in rows]

    def copies_of(self, article_ids: Sequence[str]) -> dict[str, tuple[Copy, ...]]:
        """The syndicated copies recorded under each of these indexed articles."""
        if not self._has_copies or not article_ids:
            return {}
        out: dict[str, list[Copy]] = {}
        for row in self.db.execute(
            "SELECT of_id, id, title, source, url, date, author, path, similarity FROM copies "
            "WHERE of_id IN (SELECT value FROM json_each(?)) ORDER BY added_at, id",
            (json.dumps(list(article_ids)),),
        ):
            out.setdefault(row[0], []).append(Copy(*row[1:]))
        return {k: tuple(v) for k, v in out.items()}

    def copy_records(self) -> dict[str, tuple[str, str]]:
        """Every recorded copy: its id -> (the indexed article it copies, its content hash)."""
        if not self._has_copies:
            return {}
        return {r[0]: (r[1], r[2]) for r in self.db.execute("SELECT id, of_id, hash FROM copies")}

    def copy_article(self, copy_id: str) -> Article | None:
        """A recorded copy as an article, to index it in place of the one it copied."""
        if not self._has_copies:
            return None
        row = self.db.execute(
            "SELECT id, text, title, date, url, author, source, path FROM copies WHERE id = ?", (copy_id,)
        ).fetchone()
        return Article(*row) if row else None

    def signatures(self) -> Iterator[tuple[str, np.ndarray]]:
        """Each indexed article's MinHash signature (articles too short to have one are absent)."""
        import numpy as np

        if not self._has_copies:
            return
        for aid, blob in self.db.execute("SELECT article_id, sig FROM signatures"):
            yield aid, np.frombuffer(blob, dtype=np.uint64)

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def article(self, article_id: str) -> tuple[ArticleInfo, str] | None:
        """An article's info and full text, or None."""
        row = self.db.execute(
            "SELECT id, title, date, url, author, source, path, "
            "(SELECT COUNT(*) FROM chunks c WHERE c.article_id = articles.id), length(text), text "
            "FROM articles WHERE id = ?",
            (article_id,),
        ).fetchone()
        if row is None:
            return None
        copies = len(self.copies_of([article_id]).get(article_id, ()))
        return ArticleInfo(*row[:9], copies=copies), row[9]

    def paths(self) -> list[tuple[str, str]]:
        """(id, path) of every indexed article and recorded copy."""
        rows = self.db.execute("SELECT id, path FROM articles").fetchall()
        if self._has_copies:
            rows += self.db.execute("SELECT id, path FROM copies").fetchall()
        return rows

    def hashes(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT id, hash FROM articles").fetchall())

    def stats(self) -> dict[str, Any]:
        folder = self.root / self.generation
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        return {
            "index": str(self.root),
            "generation": self.generation,
            "articles": self.manifest["counts"]["articles"],
            "chunks": self.manifest["counts"]["chunks"],
            "embedder": self.manifest["embedder"]["name"],
            "dimension": self.manifest["embedder"]["dimension"],
            "index_type": self.index_type,
            "index_params": self.index_params,
            "chunking": self.manifest["chunking"],
            "bytes": size,
            "created_at": self.manifest["created_at"],
        }


@contextlib.contextmanager
def writer_lock(root: Path, *, wait_s: float = 600.0) -> Iterator[None]:
    """Hold the one-writer lock of `root` (other processes wait up to `wait_s`)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise IndexLocked(
                        f"another process has been writing to {root} for over {wait_s:.0f} s; "
                        "wait for it to finish, or stop it"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


class Transaction:
    """Changes staged against the current generation, written as the next one by `commit`."""

    def __init__(
        self,
        root: Path,
        *,
        embedder: dict[str, Any],
        chunking: dict[str, Any],
        rebuild: bool = False,
        ann_threshold: int | None = None,
        agreement: Callable[[dict[str, Any]], float] | None = None,
        probe: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.root = root
        self.embedder = embedder
        self.chunking = chunking
        self.ann_threshold = default_ann_threshold() if ann_threshold is None else ann_threshold
        if not isinstance(self.ann_threshold, int) or self.ann_threshold < 2:
            raise ConfigError(f"ann_threshold must be an integer >= 2, got {self.ann_threshold!r}")
        self.base: Snapshot | None = None
        self._keep: str | None = None
        if rebuild:
            with contextlib.suppress(IndexNotFound, IndexCorrupt):
                self._keep = read_pointer(root)[0]
        else:
            try:
                self.base = Snapshot.open(root)
            except IndexNotFound:
                self.base = None
        if self.base is not None:
            self._keep = self.base.generation
            self.base.check_embedder(
                embedder["name"],
                embedder["dimension"],
                backend=embedder.get("backend", "torch"),
                agreement=agreement,
            )
            # The index keeps the record of the backend that made it and its probe.
            built = self.base.embedder
            self.embedder = {
                **embedder,
                **{k: built[k] for k in ("backend", "probe") if k in built},
            }
        if not self.embedder.get("probe") and probe is not None:
            # Computed only for an index that has none yet (new, or from before probes).
            self.embedder = {**self.embedder, "probe": probe()}
        self._hashes = self.base.hashes() if self.base else {}
        self._copies = self.base.copy_records() if self.base else {}
        self._puts: dict[str, tuple[Article, str, list[Chunk], np.ndarray, np.ndarray | None]] = {}
        self._removes: set[str] = set()
        self._put_copies: dict[str, tuple[Article, str, str, float]] = {}
        self._meta: dict[str, str] = {}

    def hash_of(self, article_id: str) -> str | None:
        """The stored content hash of an article or a recorded copy, as staged so far."""
        if article_id in self._puts:
            return self._puts[article_id][1]
        if article_id in self._put_copies:
            return self._put_copies[article_id][1]
        if article_id in self._removes:
            return None
        if article_id in self._copies:
            return self._copies[article_id][1]
        return self._hashes.get(article_id)

    def is_indexed(self, article_id: str) -> bool:
        """True when the article is (as staged so far) indexed, not a copy of another."""
        if article_id in self._puts:
            return True
        return article_id in self._hashes and article_id not in self._removes

    def put(
        self,
        article: Article,
        chunks: list[Chunk],
        vectors: np.ndarray,
        *,
        signature: np.ndarray | None = None,
    ) -> None:
        """Add or replace an article with its chunks, their vectors and its MinHash signature."""
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        self._put_copies.pop(article.id, None)
        self._puts[article.id] = (article, article_hash(article), chunks, vectors, signature)
        self._stage_gone(article.id)

    def put_copy(self, article: Article, of_id: str, similarity: float) -> None:
        """Record `article` as a copy of the indexed article `of_id`: stored, not indexed."""
        self._puts.pop(article.id, None)
        self._put_copies[article.id] = (article, article_hash(article), of_id, similarity)
        self._stage_gone(article.id)

    def _stage_gone(self, article_id: str) -> None:
        # Whatever the id was before (an indexed article or a copy) is replaced at commit.
        if article_id in self._hashes or article_id in self._copies:
            self._removes.add(article_id)
        else:
            self._removes.discard(article_id)

    def remove(self, article_id: str) -> bool:
        """Stage removal of an article or a copy; False when neither is in the index."""
        known = any(article_id in d for d in (self._hashes, self._puts, self._copies, self._put_copies))
        self._puts.pop(article_id, None)
        self._put_copies.pop(article_id, None)
        if article_id in self._hashes or article_id in self._copies:
            self._removes.add(article_id)
        return known

    def copies_of(self, article_id: str) -> list[tuple[str, float]]:
        """The copies (id, similarity) that will be recorded under `article_id`, oldest first."""
        out = [
            (cid, 0.0)
            for cid, (of, _) in self._copies.items()
            if of == article_id and cid not in self._removes and cid not in self._put_copies
        ]
        out += [(cid, sim) for cid, (_, _, of, sim) in self._put_copies.items() if of == article_id]
        return out

    def copy_article(self, copy_id: str) -> Article | None:
        """A copy's article, whether staged or recorded."""
        if copy_id in self._put_copies:
            return self._put_copies[copy_id][0]
        return self.base.copy_article(copy_id) if self.base and copy_id in self._copies else None

    def set_meta(self, key: str, value: str) -> None:
        if self.base is None or self.base.meta(key) != value:
            self._meta[key] = value

    @property
    def dirty(self) -> bool:
        return bool(self._puts or self._removes or self._put_copies or self._meta)

    def commit(self) -> str:
        """Write the next generation and make it live; returns its name."""
        import faiss
        import numpy as np

        gens = list_generations(self.root)
        number = int(gens[-1].split("-")[1]) + 1 if gens else 1
        gen = f"gen-{number:06d}"
        folder = self.root / gen
        tmp = self.root / (gen + ".tmp")
        for leftover in (folder, tmp):
            if leftover.exists():
                shutil.rmtree(leftover)
        tmp.mkdir(parents=True)

        db_path = tmp / CHUNKS
        if self.base is not None:
            shutil.copyfile(self.root / self.base.generation / CHUNKS, db_path)
            index = faiss.clone_index(self.base.index)
            kind, params = self.base.index_type, self.base.index_params
        else:
            index = flat_index(self.embedder["dimension"])
            kind, params = FLAT, {}
        db = sqlite3.connect(db_path)
        try:
            db.execute("PRAGMA journal_mode=DELETE")
            db.executescript(_SCHEMA)
            with db:
                row = db.execute("SELECT value FROM meta WHERE key='next_id'").fetchone()
                next_id = int(row[0]) if row else 0
                gone = [*self._removes, *(a for a in self._puts if a in self._hashes)]
                old_ids: list[int] = []
                for aid in gone:
                    ids_of = [r[0] for r in db.execute("SELECT id FROM chunks WHERE article_id=?", (aid,))]
                    old_ids += ids_of
                    db.execute("DELETE FROM chunks WHERE article_id=?", (aid,))
                    db.executemany("DELETE FROM chunks_fts WHERE rowid=?", [(i,) for i in ids_of])
                    db.execute("DELETE FROM articles WHERE id=?", (aid,))
                    db.execute("DELETE FROM signatures WHERE article_id=?", (aid,))
                    db.execute("DELETE FROM copies WHERE id=?", (aid,))
                if old_ids:
                    index.remove_ids(np.asarray(old_ids, dtype=np.int64))
                now = time.time()
                for article, digest, of_id, similarity in self._put_copies.values():
                    db.execute(
                        "INSERT OR REPLACE INTO copies VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        (article.id, of_id, *_stored(article, digest), similarity, now),
                    )
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(self._meta.items()))
                for article, digest, chunks, vectors, sig in self._puts.values():
                    if sig is not None:
                        db.execute(
                            "INSERT OR REPLACE INTO signatures VALUES (?, ?)",
                            (article.id, np.asarray(sig, dtype=np.uint64).tobytes()),
                        )
                    db.execute(
                        "INSERT INTO articles VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (article.id, *_stored(article, digest), now),
                    )
                    ids = np.arange(next_id, next_id + len(chunks), dtype=np.int64)
                    next_id += len(chunks)
                    db.executemany(
                        "INSERT INTO chunks VALUES (?,?,?,?,?)",
                        [
                            (int(i), c.article_id, c.ordinal, c.start, c.end)
                            for i, c in zip(ids, chunks, strict=True)
                        ],
                    )
                    db.executemany(
                        "INSERT INTO chunks_fts(rowid, text) VALUES (?, ?)",
                        [(int(i), f"{article.title}\n{c.text}") for i, c in zip(ids, chunks, strict=True)],
                    )
                    if len(chunks):
                        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('next_id', ?)", (str(next_id),))
                n_articles = db.execute("SELECT COUNT(*) FROM articles").fetchone()[0]
                n_chunks = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        finally:
            db.close()
        if n_chunks != index.ntotal:
            raise RuntimeError(f"internal error: {n_chunks} chunks but {index.ntotal} vectors")
        index, kind, params = fit_index(index, kind, params, self.ann_threshold)
        faiss.write_index(index, str(tmp / VECTORS))
        files = {}
        for name in (VECTORS, CHUNKS):
            _fsync(tmp / name)
            files[name] = {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
        manifest = {
            "format_version": FORMAT_VERSION,
            "generation": number,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "embedder": self.embedder,
            "chunking": self.chunking,
            "index_type": kind,
            "index_params": params,
            "metric": "inner_product",
            "versions": _versions(),
            "counts": {"articles": n_articles, "chunks": n_chunks, "vectors": int(index.ntotal)},
            "files": files,
        }
        raw = json.dumps(manifest, indent=2).encode("utf-8")
        _write_durably(tmp / MANIFEST, raw)
        os.replace(tmp, folder)
        _fsync(self.root)
        # The commit point: one atomic rename of the pointer.
        _write_durably(self.root / CURRENT, f"{gen} {hashlib.sha256(raw).hexdigest()}\n".encode())
        log.info("committed %s: %d articles, %d chunks", gen, n_articles, n_chunks)
        for old in self.root.glob("gen-*"):
            if old.name not in (gen, self._keep):
                shutil.rmtree(old, ignore_errors=True)
        return gen


def recover(root: str | os.PathLike[str]) -> str:
    """Point CURRENT at the newest generation that verifies; returns its name."""
    root = Path(root)
    for gen in reversed(list_generations(root)):
        try:
            manifest_raw = (root / gen / MANIFEST).read_bytes()
            verify_generation(root, gen, None)
        except (IndexCorrupt, OSError):
            log.warning("generation %s is damaged; skipping it", gen)
            continue
        digest = hashlib.sha256(manifest_raw).hexdigest()
        _write_durably(root / CURRENT, f"{gen} {digest}\n".encode())
        return gen
    raise IndexCorrupt(
        f"no intact generation left in {root}; rebuild it with `rag ingest --rebuild --index {root} PATH...`"
    )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("rag-articles", "faiss-cpu", "sentence-transformers", "torch"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out
