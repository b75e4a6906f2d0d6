"""A segment: a write-once folder of chunks (SQLite with FTS5) and their vectors (FAISS), and
the articles and copies that came with them. A generation lists its segments, each with the
ids it no longer serves (articles removed or replaced since it was written); reading one
leaves those out."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import IndexCorrupt
from ..types import Article, Chunk
from . import files
from .ann import FLAT, all_vectors, coarse_key, vector_index
from .files import CHUNKS, COARSE, VECTORS, recover_hint, write_files_record
from .text import TOKENIZER, terms

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS articles (
    id TEXT PRIMARY KEY, title TEXT, date TEXT, url TEXT, author TEXT, source TEXT,
    path TEXT, hash TEXT NOT NULL, text TEXT NOT NULL, added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, article_id TEXT NOT NULL REFERENCES articles(id),
    ordinal INTEGER NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_article ON chunks(article_id);
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
CREATE TABLE IF NOT EXISTS bands (key TEXT NOT NULL, article_id TEXT NOT NULL);
"""
# Built once the rows are in (faster than keeping it up to date row by row).
BANDS_INDEX = "CREATE INDEX IF NOT EXISTS bands_key ON bands(key)"

# What the keyword index holds of a chunk: its article's title, then its text.
INDEXED_TEXT = 'a.title || char(10) || substr(a.text, c.start + 1, c."end" - c.start)'


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


def stored(a: Article, digest: str) -> tuple[str, ...]:
    """An article's columns after its id, as both `articles` and `copies` keep them."""
    return (a.title, a.date, a.url, a.author, a.source, a.path, digest, a.text)


def as_json(values: Iterable[Any]) -> str:
    return json.dumps(list(values))


# Loaded vector indexes by file and checksum: a new generation that keeps a segment reuses
# the index a reader already has in memory instead of reading it again.
_loaded: weakref.WeakValueDictionary[tuple[str, str], Any] = weakref.WeakValueDictionary()
_loading = threading.Lock()


class Segment:
    """One segment as a generation lists it, opened read-only; its vectors load on first use."""

    def __init__(self, root: Path, record: dict[str, Any]) -> None:
        self.root = root
        self.record = record
        self.name: str = record["name"]
        self.folder = root / self.name
        self.index_type: str = record.get("index_type", FLAT)
        self.index_params: dict[str, Any] = dict(record.get("index_params") or {})
        self.deleted: frozenset[str] = frozenset(record.get("deleted") or ())
        self._deleted_json = as_json(sorted(self.deleted))
        uri = f"file:{self.folder / CHUNKS}?mode=ro&immutable=1"
        try:
            # check_same_thread=False: the UI searches from worker threads; the file is immutable.
            self.db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            # Filters compare names as Python (and the Qdrant store) lower-case them: SQLite's
            # own lower() leaves every letter past ASCII as it is ("DÉSK" != "désk").
            self.db.create_function(
                "py_lower", 1, lambda v: v.lower() if isinstance(v, str) else v, deterministic=True
            )
            self.rows = self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
            # The keyword index's term counts, for rarity weights (temp: the file stays untouched).
            self.db.execute("CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, chunks_fts, row)")
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as e:
            raise IndexCorrupt(f"{self.folder / CHUNKS} cannot be read ({e}); {recover_hint(root)}") from None
        expected = record.get("counts", {}).get("chunks")
        if expected is not None and expected != self.rows:
            raise IndexCorrupt(
                f"{self.folder}: {self.rows} chunks but the manifest says {expected}; {recover_hint(root)}"
            )
        # Generations written before copies were kept have neither table: none to read.
        self.has_copies = "copies" in tables
        self.has_meta = "meta" in tables
        self.has_bands = "bands" in tables
        self._bands: dict[str, list[str]] | None = None
        self._index: Any = None
        self._lock = threading.Lock()
        # Held from the start: a commit's clean-up may remove this segment's folder before a
        # reader of an older generation first searches it; the open file stays readable.
        self._vectors_fd = _open_quietly(self.folder / VECTORS)
        if self._vectors_fd is not None:
            weakref.finalize(self, os.close, self._vectors_fd)
        self._dead: np.ndarray | None = None
        self._ids: np.ndarray | None = None
        self._dead_text: dict[str, Any] | None = None
        self._not_dead: tuple[Any, Any] | None = None
        self._tokens: int | None = record.get("counts", {}).get("tokens")

    def close(self) -> None:
        self.db.close()

    def adopt(self, other: Segment) -> None:
        """Take what `other`, the same segment in an earlier generation, has loaded (its
        vectors, its id list), when it is made of the same files."""
        if other.record.get("files") != self.record.get("files"):
            return
        with other._lock:
            self._index = self._index if self._index is not None else other._index
        self._ids = other._ids
        if other._tokens is not None:
            self._tokens = other._tokens
        if self._bands is None:
            self._bands = other._bands

    # -- vectors -----------------------------------------------------------------------------

    @property
    def index(self) -> Any:
        """The FAISS index of this segment (every stored vector, dead ones included)."""
        if self._index is None:
            with self._lock:
                if self._index is None:
                    self._index = self._load()
        return self._index

    def _load(self) -> Any:
        import faiss

        path = self.folder / VECTORS
        key = (str(path), str(self.record.get("files", {}).get(VECTORS, {}).get("sha256", "")))
        readable = f"/proc/self/fd/{self._vectors_fd}" if self._vectors_fd is not None else str(path)
        if not os.path.exists(readable):
            readable = str(path)
        with _loading:
            index = _loaded.get(key) if key[1] else None
            if index is None:
                try:
                    index = faiss.read_index(readable)
                except RuntimeError as e:
                    raise IndexCorrupt(f"{path} cannot be read ({e}); {recover_hint(self.root)}") from None
                if key[1]:
                    _loaded[key] = index
        if index.ntotal != self.rows:
            raise IndexCorrupt(
                f"{self.folder}: {index.ntotal} vectors but {self.rows} chunks; {recover_hint(self.root)}"
            )
        if self.index_type != FLAT:
            faiss.extract_index_ivf(index).nprobe = int(self.index_params["nprobe"])
        return index

    @property
    def coarse(self) -> str | None:
        """The key of this segment's coarse quantizer (IVF only; None before keys were kept)."""
        return self.index_params.get("coarse")

    def quantizer(self) -> Any:
        """This IVF segment's coarse quantizer, read from its small file when it has one."""
        import faiss

        path = self.folder / COARSE
        if path.exists():
            try:
                return faiss.read_index(str(path))
            except RuntimeError as e:
                raise IndexCorrupt(f"{path} cannot be read ({e}); {recover_hint(self.root)}") from None
        return faiss.clone_index(faiss.extract_index_ivf(self.index).quantizer)

    def dead_chunks(self) -> np.ndarray:
        """The chunk ids of the articles this generation no longer serves, sorted."""
        import numpy as np

        if self._dead is None:
            if not self.deleted:
                self._dead = np.zeros(0, dtype=np.int64)
            else:
                rows = self.db.execute(
                    "SELECT id FROM chunks WHERE article_id IN (SELECT value FROM json_each(?)) ORDER BY id",
                    (self._deleted_json,),
                ).fetchall()
                self._dead = np.asarray([r[0] for r in rows], dtype=np.int64)
        return self._dead

    @property
    def live(self) -> int:
        return self.rows - len(self.dead_chunks())

    def ids(self) -> np.ndarray:
        """Every chunk id stored here (dead ones included), sorted."""
        import numpy as np

        if self._ids is None:
            rows = self.db.execute("SELECT id FROM chunks ORDER BY id").fetchall()
            self._ids = np.asarray([r[0] for r in rows], dtype=np.int64)
        return self._ids

    def holds(self, ids: np.ndarray) -> np.ndarray:
        """A mask of which of `ids` are stored here."""
        import numpy as np

        mine = self.ids()
        if not len(mine):
            return np.zeros(len(ids), dtype=bool)
        pos = np.clip(np.searchsorted(mine, ids), 0, len(mine) - 1)
        return mine[pos] == ids

    def search(self, q: np.ndarray, k: int, selector: Any, filtered: bool) -> list[tuple[int, float]]:
        """Top-k live chunk ids by inner product; `selector` (a FAISS IDSelector) when a
        filter restricts the ids, else the dead ones are left out here."""
        import faiss

        if self.live == 0:
            return []
        index = self.index
        sel = selector if selector is not None else self._live_selector()
        k = min(k, int(index.ntotal))
        if sel is None:
            scores, ids = index.search(q, k)
        elif self.index_type == FLAT:
            scores, ids = index.search(q, k, params=faiss.SearchParameters(sel=sel))
        else:
            ivf = faiss.extract_index_ivf(index)
            # A filter can leave the probed lists empty: scan them all (still exact for the
            # allowed vectors, and a filtered search is rarely large).
            nprobe = ivf.nlist if filtered else ivf.nprobe
            scores, ids = index.search(q, k, params=faiss.SearchParametersIVF(sel=sel, nprobe=nprobe))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def _live_selector(self) -> Any:
        """A FAISS selector leaving out the dead rows (None when there are none), made once."""
        import faiss

        if self._not_dead is None and len(self.dead_chunks()):
            with self._lock:
                if self._not_dead is None:
                    dead = faiss.IDSelectorBatch(self.dead_chunks())
                    self._not_dead = (dead, faiss.IDSelectorNot(dead))
        return self._not_dead[1] if self._not_dead is not None else None

    # -- keywords ----------------------------------------------------------------------------

    def keyword_candidates(self, match: str, k: int, allowed_json: str | None) -> list[int]:
        """Up to `k` live chunk ids matching an FTS5 query, best first by this segment's own
        BM25 (what a single segment answers with)."""
        sql, args = "", []
        if self.deleted:
            sql += (
                " AND rowid NOT IN (SELECT id FROM chunks WHERE article_id IN "
                "(SELECT value FROM json_each(?)))"
            )
            args.append(self._deleted_json)
        if allowed_json is not None:
            sql += " AND rowid IN (SELECT value FROM json_each(?))"
            args.append(allowed_json)
        rows = self.db.execute(
            f"SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ?{sql} ORDER BY bm25(chunks_fts) LIMIT ?",
            (match, *args, k),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def keyword_scores(self, match: str, k: int, allowed_json: str | None) -> list[tuple[int, float]]:
        """FTS5's own BM25 over this segment alone (exact when it is the whole index)."""
        sql, args = "", []
        if allowed_json is not None:
            sql, args = " AND rowid IN (SELECT value FROM json_each(?))", [allowed_json]
        rows = self.db.execute(
            f"SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ?{sql} "
            "ORDER BY bm25(chunks_fts) LIMIT ?",
            (match, *args, k),
        ).fetchall()
        return [(int(i), -float(s)) for i, s in rows]

    def indexed_texts(self, ids: Sequence[int]) -> dict[int, str]:
        """What the keyword index holds of each of these chunks (title, newline, text)."""
        if not ids:
            return {}
        rows = self.db.execute(
            f"SELECT c.id, {INDEXED_TEXT} FROM chunks c JOIN articles a ON a.id = c.article_id "
            "WHERE c.id IN (SELECT value FROM json_each(?))",
            (as_json(ids),),
        ).fetchall()
        return {int(i): t for i, t in rows}

    def tokens(self) -> int:
        """Tokens in the keyword index, dead rows included (recorded at write; counted for
        segments written before that)."""
        if self._tokens is None:
            self._tokens = int(self.db.execute("SELECT COALESCE(SUM(cnt), 0) FROM temp.vocab").fetchone()[0])
        return self._tokens

    def term_rows(self, words: Sequence[str]) -> dict[str, int]:
        """Rows (dead ones included) holding each term."""
        rows = self.db.execute(
            "SELECT term, doc FROM temp.vocab WHERE term IN (SELECT value FROM json_each(?))",
            (as_json(sorted(set(words))),),
        ).fetchall()
        return {t: int(d) for t, d in rows}

    def phrase_rows(self, phrase_query: str) -> int:
        """Rows (dead ones included) matching an FTS5 phrase query."""
        return int(
            self.db.execute(
                "SELECT COUNT(*) FROM chunks_fts WHERE chunks_fts MATCH ?", (phrase_query,)
            ).fetchone()[0]
        )

    def dead_text(self) -> dict[str, Any]:
        """The dead rows as the keyword index read them: their count, their tokens and each
        one's terms, so index-wide statistics can leave them out."""
        if self._dead_text is None:
            ids = self.dead_chunks().tolist()
            texts = self.indexed_texts(ids)
            toks = terms([texts[i] for i in ids]) if ids else []
            holding = Counter(t for row in toks for t in set(row))
            self._dead_text = {
                "rows": len(ids),
                "tokens": sum(len(t) for t in toks),
                "terms": toks,
                "df": holding,
            }
        return self._dead_text

    # -- near-duplicates ---------------------------------------------------------------------

    def sharing_bands(self, keys: Sequence[str]) -> set[str]:
        """The live articles whose signature shares one of these LSH band keys."""
        if not self.has_copies:
            return set()
        if self.has_bands:
            rows = self.db.execute(
                "SELECT DISTINCT article_id FROM bands WHERE key IN (SELECT value FROM json_each(?))",
                (as_json(keys),),
            ).fetchall()
            found = {r[0] for r in rows}
        else:
            if self._bands is None:
                # A segment from before band keys were kept: its signatures, banded once.
                import numpy as np

                from ..dedup import band_keys

                self._bands = {}
                for aid, blob in self.db.execute("SELECT article_id, sig FROM signatures"):
                    for k in band_keys(np.frombuffer(blob, dtype=np.uint64)):
                        self._bands.setdefault(k, []).append(aid)
            found = {aid for k in keys for aid in self._bands.get(k, ())}
        return found - self.deleted

    def signatures_of(self, article_ids: Sequence[str]) -> dict[str, np.ndarray]:
        import numpy as np

        rows = self.db.execute(
            "SELECT article_id, sig FROM signatures WHERE article_id IN (SELECT value FROM json_each(?))",
            (as_json(article_ids),),
        ).fetchall()
        return {aid: np.frombuffer(blob, dtype=np.uint64) for aid, blob in rows if aid not in self.deleted}

    # -- rows --------------------------------------------------------------------------------

    def live_sql(self, column: str) -> tuple[str, list[str]]:
        """A WHERE condition leaving out the dead ids in `column`, and its argument."""
        if not self.deleted:
            return "1", []
        return f"{column} NOT IN (SELECT value FROM json_each(?))", [self._deleted_json]


def _open_quietly(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None  # reported as missing or unreadable when it is first read


class SegmentWriter:
    """A new segment, written into a temporary folder and renamed into place by `finish`."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.tmp = root / f"{name}.tmp"
        if (root / name).exists():
            # Names come past every folder on disk (`files.next_free_segment`): never here.
            raise RuntimeError(f"internal error: segment {root / name} exists already")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.db = sqlite3.connect(self.tmp / CHUNKS)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")  # fsynced whole by `finish`
        self.db.executescript(SCHEMA)
        self.now = time.time()
        self._bands: list[tuple[str, str]] = []

    def put(
        self, article: Article, digest: str, ids: Sequence[int], chunks: Sequence[Chunk], sig: Any
    ) -> None:
        import numpy as np

        if sig is not None:
            self.put_signature(article.id, np.asarray(sig, dtype=np.uint64))
        self.db.execute(
            "INSERT INTO articles VALUES (?,?,?,?,?,?,?,?,?,?)",
            (article.id, *stored(article, digest), self.now),
        )
        self.db.executemany(
            "INSERT INTO chunks VALUES (?,?,?,?,?)",
            [(int(i), c.article_id, c.ordinal, c.start, c.end) for i, c in zip(ids, chunks, strict=True)],
        )
        self.db.executemany(
            "INSERT INTO chunks_fts(rowid, text) VALUES (?, ?)",
            [(int(i), f"{article.title}\n{c.text}") for i, c in zip(ids, chunks, strict=True)],
        )

    def put_signature(self, article_id: str, sig: np.ndarray) -> None:
        from ..dedup import band_keys

        self.db.execute("INSERT INTO signatures VALUES (?, ?)", (article_id, sig.tobytes()))
        self._bands += [(k, article_id) for k in band_keys(sig)]

    def put_copy(self, article: Article, digest: str, of_id: str, similarity: float) -> None:
        self.db.execute(
            "INSERT INTO copies VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (article.id, of_id, *stored(article, digest), similarity, self.now),
        )

    def take(self, source: Segment) -> tuple[np.ndarray, np.ndarray]:
        """Copy the live rows of an existing segment (a merge); returns its live (ids, vectors)."""
        import numpy as np

        self.db.commit()
        self.db.execute("ATTACH DATABASE ? AS src", (f"file:{source.folder / CHUNKS}?mode=ro&immutable=1",))
        try:
            keep, args = source.live_sql("id")
            keep_a, _ = source.live_sql("article_id")
            keep_c, _ = source.live_sql("c.article_id")
            with self.db:
                self.db.execute(f"INSERT INTO articles SELECT * FROM src.articles WHERE {keep}", args)
                self.db.execute(
                    f"INSERT INTO chunks SELECT * FROM src.chunks WHERE {keep_a} ORDER BY id", args
                )
                self.db.execute(
                    f"INSERT INTO chunks_fts(rowid, text) SELECT c.id, {INDEXED_TEXT} FROM src.chunks c "
                    f"JOIN src.articles a ON a.id = c.article_id WHERE {keep_c} ORDER BY c.id",
                    args,
                )
                if source.has_copies:
                    self.db.execute(f"INSERT INTO copies SELECT * FROM src.copies WHERE {keep}", args)
            if source.has_copies:
                # Signatures go in with their band keys (a segment from before bands has none).
                rows = self.db.execute(f"SELECT article_id, sig FROM src.signatures WHERE {keep_a}", args)
                with self.db:
                    for aid, blob in rows.fetchall():
                        self.put_signature(aid, np.frombuffer(blob, dtype=np.uint64))
        finally:
            self.db.execute("DETACH DATABASE src")
        ids, vectors = all_vectors(source.index)
        dead = source.dead_chunks()
        if len(dead):
            alive = ~np.isin(ids, dead)
            ids, vectors = ids[alive], vectors[alive]
        return ids, vectors

    def finish(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        *,
        dimension: int,
        threshold: int,
        reference: tuple[Any, dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Write the vectors (see `ann.vector_index` for `reference`), fsync,
        checksum and rename into place; returns the segment's record for the manifest."""
        import faiss
        import numpy as np

        self.db.executemany("INSERT INTO bands VALUES (?, ?)", self._bands)
        self.db.execute(BANDS_INDEX)
        self.db.commit()
        counts = {
            "articles": self.db.execute("SELECT COUNT(*) FROM articles").fetchone()[0],
            "chunks": self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0],
            "copies": self.db.execute("SELECT COUNT(*) FROM copies").fetchone()[0],
        }
        self.db.execute("CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, chunks_fts, row)")
        counts["tokens"] = int(self.db.execute("SELECT COALESCE(SUM(cnt), 0) FROM temp.vocab").fetchone()[0])
        self.db.close()
        order = np.argsort(ids, kind="stable")
        ids = np.asarray(ids, dtype=np.int64)[order]
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), dimension)[order]
        if counts["chunks"] != len(ids):
            raise RuntimeError(f"internal error: {counts['chunks']} chunks but {len(ids)} vectors")
        index, kind, params = vector_index(vectors, ids, dimension, threshold, reference=reference)
        faiss.write_index(index, str(self.tmp / VECTORS))
        names = [VECTORS, CHUNKS]
        if kind != FLAT:
            params["coarse"] = coarse_key(index)
            if not params.get("coarse_shared"):
                # Its own quantizer alone, small: later commits build on it without reading
                # this segment's vectors.
                faiss.write_index(faiss.extract_index_ivf(index).quantizer, str(self.tmp / COARSE))
                names.append(COARSE)
        written = write_files_record(self.tmp, names)
        files._fsync(self.tmp)
        os.replace(self.tmp, self.root / self.name)
        record = {"name": self.name, "files": written, "index_type": kind, "index_params": params}
        if len(ids):
            record["ids"] = [int(ids[0]), int(ids[-1])]
        return {**record, "counts": counts, "deleted": []}

    def abandon(self) -> None:
        try:
            self.db.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
