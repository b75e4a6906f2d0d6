"""The index on Qdrant (`store` setting `qdrant`): the same reads and writes as the FAISS
store, over three Qdrant collections, so an index can outgrow one machine's memory.

- `<name>_chunks`: a point per chunk (id = chunk id): its vector ("dense", dot product on
  normalised vectors), a sparse keyword vector ("bm25": BM25 term weights from the keyword
  index's own tokenisation, weighted by Qdrant's IDF modifier) and its payload (article id,
  offsets, text, title, date, source, author, url, terms).
- `<name>_articles`: a point per indexed article and per syndicated copy (no vector): its
  text, metadata, content hash, MinHash signature and LSH band keys.
- `<name>_meta`: one point: the live generation, what built the index, counts, feed state.

Commits are atomic like the FAISS store's: every point carries the generation that added it
(and, once removed or replaced, the one that removed it); readers see the points of the
generation the meta point names, and a commit makes its points visible by rewriting that one
point last. What a crashed commit left is removed by the next one; points no generation but
the previous one sees are removed two commits later.

Where: `qdrant_url` names a server or cluster; without one, qdrant-client's local mode keeps
the data in the index folder (`DIR/qdrant/`; one process at a time). The index folder's
`STORE` file records the store, the URL and the collection name, so later commands need no
flag.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, IndexNotFound
from ..filters import Filters, article_date
from ..types import Article, ArticleInfo, Copy
from . import files
from .segment import ChunkRow
from .snapshot import Reading
from .text import BM25_B, BM25_K1, keyword_words, terms
from .transaction import Staged

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

STORE_FILE = "STORE"
LOCAL_FOLDER = "qdrant"
# BM25's length normalisation needs an average row length before any row exists: chunks are
# cut near `chunk_tokens` (128 embedder tokens, about 90 keyword terms with the title).
AVERAGE_TERMS = 90.0
_PAGE = 1024
_NAMESPACE = uuid.UUID("5f0c7a54-3c1e-4a43-9c3b-2b5a4c0e8d11")
_META_ID = 1

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


@atexit.register
def _close_clients() -> None:
    # Before the interpreter tears modules down: a local client flushes its storage on close,
    # and closing it from its finaliser at exit fails noisily.
    with _clients_lock:
        for found in _clients.values():
            with contextlib.suppress(Exception):
                found.close()
        _clients.clear()


# -- where an index lives --------------------------------------------------------------------


def recorded(root: Path) -> dict[str, Any] | None:
    """The `STORE` record of an index folder (None: the FAISS store)."""
    try:
        data = json.loads((root / STORE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{root / STORE_FILE} cannot be read ({e}); it says which store holds the index"
        ) from None
    if not isinstance(data, dict) or data.get("store") != "qdrant":
        raise ConfigError(f"{root / STORE_FILE} names no store this version reads: {data!r}")
    return data


def record(url: str) -> dict[str, Any]:
    """A new `STORE` record: collections of a name no other index has (two folders, or a
    folder deleted and made again, never share or inherit data on a server)."""
    return {"store": "qdrant", "url": url, "collection": "rag_" + uuid.uuid4().hex[:16]}


def client(root: Path, url: str) -> Any:
    """One client per server, or per local folder (local mode locks its folder)."""
    from qdrant_client import QdrantClient

    key = url or str((root / LOCAL_FOLDER).resolve())
    with _clients_lock:
        found = _clients.get(key)
        if found is None:
            try:
                found = QdrantClient(url=url, timeout=60) if url else _Serialised(QdrantClient(path=key))
            except RuntimeError as e:
                raise ConfigError(
                    f"cannot open the Qdrant store at {key} ({e}); local mode serves one process at a "
                    "time: stop the other one (a `rag serve`?), or run a Qdrant server and give --qdrant-url"
                ) from None
            _clients[key] = found
        return found


class _Serialised:
    """A local-mode client, one call at a time: local mode has no locks of its own, and a
    server's request threads search while its watcher commits."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return call


def forget_client(root: Path) -> None:
    """Close the local-mode client of `root` (its folder is about to go)."""
    key = str((root / LOCAL_FOLDER).resolve())
    with _clients_lock:
        found = _clients.pop(key, None)
    if found is not None:
        found.close()


class Collections:
    """The three collections of one index on one client."""

    def __init__(self, root: Path, spec: dict[str, Any]) -> None:
        self.root = root
        self.url = str(spec.get("url") or "")
        self.name = str(spec["collection"])
        self.client = client(root, self.url)
        self.chunks = f"{self.name}_chunks"
        self.articles = f"{self.name}_articles"
        self.meta = f"{self.name}_meta"

    def where(self) -> str:
        return self.url or str(self.root / LOCAL_FOLDER)

    def exists(self) -> bool:
        return bool(self.client.collection_exists(self.meta))

    def create(self, dimension: int) -> None:
        from qdrant_client import models

        if self.client.collection_exists(self.meta):
            return
        if not self.client.collection_exists(self.chunks):
            self.client.create_collection(
                self.chunks,
                vectors_config={"dense": models.VectorParams(size=dimension, distance=models.Distance.DOT)},
                sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)},
            )
        if not self.client.collection_exists(self.articles):
            self.client.create_collection(self.articles, vectors_config={})
        if self.url:
            # A server filters through payload indexes (local mode scans).
            for coll, field, schema in (
                (self.chunks, "article_id", models.PayloadSchemaType.KEYWORD),
                (self.chunks, "source_key", models.PayloadSchemaType.KEYWORD),
                (self.chunks, "day", models.PayloadSchemaType.INTEGER),
                (self.chunks, "terms", models.PayloadSchemaType.KEYWORD),
                (self.chunks, "gen_added", models.PayloadSchemaType.INTEGER),
                (self.chunks, "gen_removed", models.PayloadSchemaType.INTEGER),
                (self.articles, "aid", models.PayloadSchemaType.KEYWORD),
                (self.articles, "of_id", models.PayloadSchemaType.KEYWORD),
                (self.articles, "bands", models.PayloadSchemaType.KEYWORD),
                (self.articles, "kind", models.PayloadSchemaType.KEYWORD),
                (self.articles, "gen_added", models.PayloadSchemaType.INTEGER),
                (self.articles, "gen_removed", models.PayloadSchemaType.INTEGER),
            ):
                self.client.create_payload_index(coll, field_name=field, field_schema=schema)
        # Last: its existence says the others are complete.
        self.client.create_collection(self.meta, vectors_config={})

    def drop(self) -> None:
        """Delete the three collections (an index moved away, rebuilt, or deleted)."""
        for name in (self.chunks, self.articles, self.meta):
            if self.client.collection_exists(name):
                self.client.delete_collection(name)

    def read_meta(self) -> dict[str, Any] | None:
        if not self.exists():
            return None
        found = self.client.retrieve(self.meta, ids=[_META_ID], with_payload=True)
        return dict(found[0].payload) if found else None

    def scroll(self, collection: str, flt: Any, *, fields: Any = True) -> Iterator[Any]:
        """Every point `flt` selects, page by page, with the payload `fields` names (True: all,
        False: none, a list of keys or a payload selector)."""
        offset = None
        while True:
            points, offset = self.client.scroll(
                collection,
                scroll_filter=flt,
                limit=_PAGE,
                offset=offset,
                with_payload=list(fields) if isinstance(fields, (list, tuple)) else fields,
            )
            yield from points
            if offset is None:
                return


def _visible(generation: int, *must: Any) -> Any:
    """The points generation `generation` serves (and whatever else `must` asks)."""
    from qdrant_client import models

    return models.Filter(
        must=[models.FieldCondition(key="gen_added", range=models.Range(lte=generation)), *must],
        must_not=[models.FieldCondition(key="gen_removed", range=models.Range(lte=generation))],
    )


def _ranked(points: Sequence[Any], k: int) -> list[tuple[int, float]]:
    # Equal scores by id, as the FAISS store orders them.
    return sorted(((int(p.id), float(p.score)) for p in points), key=lambda h: (-h[1], h[0]))[:k]


def _serves(payload: dict[str, Any] | None, generation: int) -> bool:
    """Whether a point of this payload is one generation `generation` serves."""
    payload = payload or {}
    removed = payload.get("gen_removed")
    return int(payload.get("gen_added", 0)) <= generation and (removed is None or int(removed) > generation)


def _match(key: str, values: Sequence[Any]) -> Any:
    from qdrant_client import models

    return models.FieldCondition(key=key, match=models.MatchAny(any=list(values)))


def _point_id(article_id: str, generation: int) -> str:
    # Each version of an article is its own point: the old one stays for older readers.
    return str(uuid.uuid5(_NAMESPACE, f"{article_id}\0{generation}"))


def term_index(term: str) -> int:
    """A keyword term's dimension in the sparse vectors (stable across processes)."""
    return zlib.crc32(term.encode("utf-8")) & 0x7FFFFFFF


def bm25_vector(tokens: Sequence[str]) -> tuple[list[int], list[float]]:
    """A row's BM25 term weights (the IDF part is Qdrant's modifier)."""
    counts: dict[int, int] = {}
    for t in tokens:
        counts[term_index(t)] = counts.get(term_index(t), 0) + 1
    norm = BM25_K1 * (1 - BM25_B + BM25_B * len(tokens) / AVERAGE_TERMS)
    weights = {i: f * (BM25_K1 + 1) / (f + norm) for i, f in counts.items()}
    return list(weights), list(weights.values())


def pointer(root: Path) -> str:
    """What changes when a commit lands (the FAISS store's is its CURRENT file)."""
    spec = recorded(root)
    if spec is None:
        return ""
    meta = Collections(root, spec).read_meta()
    return f"qdrant-{spec['collection']}-{meta['generation']}" if meta else ""


# -- reading ---------------------------------------------------------------------------------


class QdrantSnapshot(Reading):
    """One generation of an index on Qdrant, read with the FAISS store's `Snapshot` calls."""

    def __init__(self, root: Path, spec: dict[str, Any]) -> None:
        self.root = root
        # Qdrant keeps its own segments: nothing here to fold.
        self.segments: list[Any] = []
        self.where = Collections(root, spec)
        meta = self.where.read_meta()
        if not meta:
            raise IndexNotFound(f"no index at {root}; build one with `rag ingest --index {root} PATH...`")
        self.meta_point = meta
        self.gen = int(meta["generation"])
        self.generation = f"qdrant-{self.gen:06d}"
        self.manifest = {
            "format_version": "qdrant",
            "embedder": meta["embedder"],
            "chunking": meta["chunking"],
            "counts": meta["counts"],
            "created_at": meta["created_at"],
            "index_type": "qdrant",
            "index_params": {},
        }
        self.index_type = "qdrant"
        self.index_params: dict[str, Any] = {}
        self._dates: dict[str, date | None] = {}
        self._any_dated: bool | None = None
        self._articles: dict[str, dict[str, Any]] | None = None
        self._df: dict[str, int] = {}  # the generation never changes under it
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, root: str | os.PathLike[str], *, verify: bool = True, previous: Any = None
    ) -> QdrantSnapshot:
        root = Path(root)
        spec = recorded(root)
        if spec is None:
            raise IndexNotFound(f"no Qdrant index at {root}")
        return cls(root, spec)

    def close(self) -> None:
        """The client stays open for the other readers of the process."""

    @property
    def index(self) -> Any:
        raise ValueError(f"{self.root} is on Qdrant: search with `search`")

    def _seen(self, *must: Any) -> Any:
        return _visible(self.gen, *must)

    # -- vectors and keywords ----------------------------------------------------------------

    def search(
        self, vector: np.ndarray, k: int, *, allowed: Sequence[int] | None = None
    ) -> list[tuple[int, float]]:
        if len(self) == 0 or (allowed is not None and len(allowed) == 0):
            return []
        return self._query([float(x) for x in vector], "dense", k, allowed)

    def keyword_search(
        self, query: str, k: int, *, allowed: Sequence[int] | None = None
    ) -> list[tuple[int, float]]:
        from qdrant_client import models

        words = sorted({t for ts in terms(keyword_words(query)) for t in ts})
        if not words or (allowed is not None and len(allowed) == 0):
            return []
        sparse = models.SparseVector(indices=[term_index(w) for w in words], values=[1.0] * len(words))
        return [(i, s) for i, s in self._query(sparse, "bm25", k, allowed) if s > 0]

    def _query(
        self, query: Any, using: str, k: int, allowed: Sequence[int] | None
    ) -> list[tuple[int, float]]:
        """The top k points this generation serves. Points it does not serve are few (those
        the last commit removed, what a commit under way adds): without a filter on ids the
        query runs unfiltered, a little deeper, and leaves them out, which spares evaluating
        the generation filter on every point (local mode evaluates filters point by point);
        when that leaves too few, it runs again, filtered."""
        from qdrant_client import models

        c = self.where
        if allowed is None:
            deeper = k + 16
            found = c.client.query_points(
                c.chunks, query=query, using=using, limit=deeper, with_payload=["gen_added", "gen_removed"]
            ).points
            seen = [p for p in found if _serves(p.payload, self.gen)]
            if len(seen) >= k or len(found) < deeper:
                return _ranked(seen, k)
        if isinstance(allowed, Selection):
            if allowed.must is None:
                return []
            must = list(allowed.must)
        elif allowed is not None:
            must = [models.HasIdCondition(has_id=[int(i) for i in allowed])]
        else:
            must = []
        found = c.client.query_points(
            c.chunks, query=query, using=using, limit=k, query_filter=self._seen(*must)
        ).points
        return _ranked(found, k)

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        import numpy as np

        if not len(ids):
            return np.zeros((0, int(self.manifest["embedder"]["dimension"])), dtype=np.float32)
        points = self.where.client.retrieve(
            self.where.chunks, ids=[int(i) for i in ids], with_vectors=["dense"]
        )
        by_id = {int(p.id): p.vector["dense"] for p in points}
        missing = [i for i in ids if int(i) not in by_id]
        if missing:
            raise KeyError(f"no chunk {missing[0]} in {self.root}")
        return np.asarray([by_id[int(i)] for i in ids], dtype=np.float32)

    def chunk_ids(self) -> list[int]:
        return sorted(int(p.id) for p in self.where.scroll(self.where.chunks, self._seen(), fields=False))

    def document_frequencies(self, words: Sequence[str]) -> dict[str, int]:
        wanted = sorted(set(words) - self._df.keys())
        if wanted and self.where.url:
            # A server counts through its payload index on the terms.
            for w in wanted:
                flt = self._seen(_match("terms", [w]))
                self._df[w] = int(
                    self.where.client.count(self.where.chunks, count_filter=flt, exact=True).count
                )
        elif wanted:
            # Local mode scans for every filter: one pass for all the words.
            found = dict.fromkeys(wanted, 0)
            for p in self.where.scroll(
                self.where.chunks, self._seen(_match("terms", wanted)), fields=["terms"]
            ):
                for term in set(p.payload["terms"]) & found.keys():
                    found[term] += 1
            self._df.update(found)
        return {w: self._df[w] for w in set(words)}

    # -- articles ----------------------------------------------------------------------------

    def _all(self) -> dict[str, dict[str, Any]]:
        """Every live article and copy point's payload but its text, by id (read once per
        snapshot); `_text` reads the text of one."""
        from qdrant_client import models

        with self._lock:
            if self._articles is None:
                but_text = models.PayloadSelectorExclude(exclude=["text"])
                found = self.where.scroll(self.where.articles, self._seen(), fields=but_text)
                self._articles = {p.payload["aid"]: dict(p.payload) for p in found}
            return self._articles

    def _text(self, article_id: str) -> str:
        a = self._all().get(article_id)
        if a is None:
            return ""
        found = self.where.client.retrieve(
            self.where.articles, ids=[_point_id(article_id, int(a["gen_added"]))], with_payload=["text"]
        )
        return str(found[0].payload["text"]) if found else ""

    def _indexed(self) -> list[dict[str, Any]]:
        return [a for a in self._all().values() if a["kind"] == "article"]

    def filter_chunks(self, filters: Filters) -> Selection:
        """The chunks of the articles that pass `filters`, as payload conditions on the chunk
        collection (the search filters by them; the ids are read only when asked for). Ids,
        sources and dates are conditions on the chunks' own fields; a byline matches anywhere
        (as on the FAISS store), which no payload condition does, so authors are resolved to
        the articles they name, as is everything on an index written before chunks carried
        `source_key` and `day` (meta `filter_fields`)."""
        from qdrant_client import models

        lo, hi = filters.date_range
        native = self.meta_point.get("filter_fields") == 1
        must: list[Any] = []
        if filters.ids:
            must.append(_match("article_id", sorted(set(filters.ids))))
        if native and filters.source:
            must.append(_match("source_key", sorted({s.lower() for s in filters.source})))
        if native and (lo or hi):
            rng = models.Range(gte=_day(lo) if lo else None, lte=_day(hi) if hi else None)
            must.append(models.FieldCondition(key="day", range=rng))
        if filters.author or (not native and (filters.source or lo or hi)):
            ids = set(filters.ids) if filters.ids else None
            sources = {s.lower() for s in filters.source} if filters.source else None
            authors = [a.lower() for a in filters.author]
            chosen = []
            for a in self._indexed():
                if ids is not None and a["aid"] not in ids:
                    continue
                if sources is not None and a["source"].lower() not in sources:
                    continue
                if authors and not any(x in a["author"].lower() for x in authors):
                    continue
                if (lo or hi) and not self._in_range(a["aid"], a["date"], lo, hi):
                    continue
                chosen.append(a["aid"])
            if not chosen:
                return Selection(self, None)
            must.append(_match("article_id", chosen))
        return Selection(self, must)

    def dated(self) -> bool:
        if self._any_dated is None:
            self._any_dated = any(
                self._in_range(a["aid"], a["date"], None, None) for a in self._indexed() if a["date"]
            )
        return self._any_dated

    def chunks(self, ids: Sequence[int]) -> list[ChunkRow]:
        if not ids:
            return []
        points = self.where.client.retrieve(self.where.chunks, ids=[int(i) for i in ids], with_payload=True)
        by_id = {}
        for p in points:
            x = p.payload
            if x["gen_added"] > self.gen or (
                x.get("gen_removed") is not None and x["gen_removed"] <= self.gen
            ):
                continue
            by_id[int(p.id)] = ChunkRow(
                int(p.id), x["article_id"], x["ordinal"], x["start"], x["end"], x["text"],
                x["title"], x["date"], x["url"], x["author"], x["source"],
            )  # fmt: skip
        return [by_id[int(i)] for i in ids if int(i) in by_id]

    def _copy_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for a in self._all().values():
            if a["kind"] == "copy":
                counts[a["of_id"]] = counts.get(a["of_id"], 0) + 1
        return counts

    def articles(self) -> list[ArticleInfo]:
        copies = self._copy_counts()
        rows = sorted(self._indexed(), key=lambda a: (a["added_at"], a["aid"]))
        return [_info(a, copies.get(a["aid"], 0)) for a in rows]

    def copies_of(self, article_ids: Sequence[str]) -> dict[str, tuple[Copy, ...]]:
        wanted = set(article_ids)
        found = sorted(
            (a for a in self._all().values() if a["kind"] == "copy" and a["of_id"] in wanted),
            key=lambda a: (a["added_at"], a["aid"]),
        )
        out: dict[str, list[Copy]] = {}
        for a in found:
            out.setdefault(a["of_id"], []).append(
                Copy(
                    a["aid"],
                    a["title"],
                    a["source"],
                    a["url"],
                    a["date"],
                    a["author"],
                    a["path"],
                    a["similarity"],
                )
            )
        return {k: tuple(v) for k, v in out.items()}

    def copy_records(self) -> dict[str, tuple[str, str]]:
        return {a["aid"]: (a["of_id"], a["hash"]) for a in self._all().values() if a["kind"] == "copy"}

    def copy_article(self, copy_id: str) -> Article | None:
        a = self._all().get(copy_id)
        return _article(a, self._text(copy_id)) if a is not None and a["kind"] == "copy" else None

    def signatures(self) -> Iterator[tuple[str, np.ndarray]]:
        for a in self._indexed():
            if a.get("sig"):
                yield a["aid"], _sig(a["sig"])

    def near(self, sig: np.ndarray) -> dict[str, np.ndarray]:
        from ..dedup import band_keys

        flt = self._seen(_match("bands", band_keys(sig)), _match("kind", ["article"]))
        return {p.payload["aid"]: _sig(p.payload["sig"]) for p in self.where.scroll(self.where.articles, flt)}

    def meta(self, key: str) -> str | None:
        value = self.meta_point.get("meta", {}).get(key)
        return None if value is None else str(value)

    def all_meta(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.meta_point.get("meta", {}).items()}

    def next_id(self) -> int:
        return int(self.meta_point["next_id"])

    def article(self, article_id: str) -> tuple[ArticleInfo, str] | None:
        a = self._all().get(article_id)
        if a is None or a["kind"] != "article":
            return None
        return _info(a, self._copy_counts().get(article_id, 0)), self._text(article_id)

    def paths(self) -> list[tuple[str, str]]:
        return [(a["aid"], a["path"]) for a in self._all().values()]

    def hashes(self) -> dict[str, str]:
        return {a["aid"]: a["hash"] for a in self._indexed()}

    def holders(self) -> dict[str, tuple[str, str]]:
        return {a["aid"]: (a["hash"], "qdrant") for a in self._indexed()}

    def copy_holders(self) -> dict[str, str]:
        return {a["aid"]: "qdrant" for a in self._all().values() if a["kind"] == "copy"}

    def _store_stats(self) -> dict[str, Any]:
        return {"store": f"qdrant at {self.where.where()}, collections {self.where.name}_*"}


def _sig(hexed: str) -> np.ndarray:
    import numpy as np

    return np.frombuffer(bytes.fromhex(hexed), dtype="<u8").astype(np.uint64)


def _info(a: dict[str, Any], copies: int) -> ArticleInfo:
    return ArticleInfo(
        a["aid"], a["title"], a["date"], a["url"], a["author"], a["source"], a["path"],
        int(a.get("chunks", 0)), int(a.get("chars", 0)), copies=copies,
    )  # fmt: skip


def _article(a: dict[str, Any], text: str) -> Article:
    return Article(a["aid"], text, a["title"], a["date"], a["url"], a["author"], a["source"], a["path"])


# -- writing ---------------------------------------------------------------------------------


class QdrantTransaction(Staged):
    """Changes staged against the live generation, written as the next one by `commit`
    (the FAISS store's `Transaction` calls)."""

    def __init__(
        self,
        root: Path,
        *,
        embedder: dict[str, Any],
        chunking: dict[str, Any],
        rebuild: bool = False,
        url: str = "",
        agreement: Callable[[dict[str, Any]], float] | None = None,
        probe: Callable[[], dict[str, Any]] | None = None,
        **_: Any,
    ) -> None:
        self.root = root
        self.embedder = embedder
        self.chunking = chunking
        old = recorded(root)
        self.rebuild = rebuild
        # A new index, a rebuild or a move from FAISS writes new collections; the folder's
        # STORE file names them once their first commit is complete (the switch), and a
        # rebuilt index's old collections go after it.
        self._replaces = old if rebuild else None
        self.spec = old if old is not None and not rebuild else record(url or (old or {}).get("url", ""))
        self.where = Collections(root, self.spec)
        self.base: QdrantSnapshot | None = None
        if self.spec is old and self.where.read_meta() is not None:
            self.base = QdrantSnapshot(root, self.spec)
        self._built_with(embedder, agreement, probe)
        self._stage(
            self.base.hashes() if self.base else {}, self.base.copy_records() if self.base else {}, set()
        )

    def commit(self, *, compact: str = "") -> str:
        """Write the next generation: new points tagged with it, removed ones marked removed
        by it, then the meta point naming it (the switch readers see)."""
        from qdrant_client import models

        from ..dedup import band_keys

        c = self.where
        dimension = int(self.embedder["dimension"])
        c.create(dimension)
        base = self.base
        current = base.gen if base else 0
        gen = current + 1
        # Left by a crashed commit (never made visible), and what no reader may see any more.
        for coll in (c.chunks, c.articles):
            c.client.delete(
                coll,
                points_selector=models.FilterSelector(
                    filter=models.Filter(
                        should=[
                            models.FieldCondition(key="gen_added", range=models.Range(gt=current)),
                            models.FieldCondition(key="gen_removed", range=models.Range(lt=current)),
                        ]
                    )
                ),
            )
        # Removals a crashed commit marked with this generation's number are not removals.
        for coll in (c.chunks, c.articles):
            c.client.delete_payload(
                coll,
                keys=["gen_removed"],
                points=models.Filter(
                    must=[models.FieldCondition(key="gen_removed", range=models.Range(gt=current))]
                ),
            )
        next_id = base.next_id() if base else 0
        chunk_counts = {a["aid"]: int(a.get("chunks", 0)) for a in base._indexed()} if base else {}
        if self._removes:
            gone = sorted(self._removes)
            for coll, key in ((c.articles, "aid"), (c.chunks, "article_id")):
                c.client.set_payload(
                    coll, payload={"gen_removed": gen}, points=_visible(current, _match(key, gone))
                )
        now = time.time()
        points: list[Any] = []
        article_points: list[Any] = []
        for article, digest, chunks, vectors, sig in self._puts.values():
            day = article_date(article.date) if article.date else None
            texts = [f"{article.title}\n{ch.text}" for ch in chunks]
            for ch, vec, toks in zip(chunks, vectors, terms(texts), strict=True):
                idx, weights = bm25_vector(toks)
                points.append(
                    models.PointStruct(
                        id=next_id,
                        vector={
                            "dense": [float(x) for x in vec],
                            "bm25": models.SparseVector(indices=idx, values=weights),
                        },
                        payload={
                            "article_id": article.id,
                            "ordinal": ch.ordinal,
                            "start": ch.start,
                            "end": ch.end,
                            "text": ch.text,
                            "title": article.title,
                            "date": article.date,
                            "url": article.url,
                            "author": article.author,
                            "source": article.source,
                            "source_key": article.source.lower(),
                            **({"day": _day(day)} if day is not None else {}),
                            "terms": sorted(set(toks)),
                            "gen_added": gen,
                        },
                    )
                )
                next_id += 1
            payload = _payload(article, digest, gen, now, kind="article", chunks=len(chunks))
            if sig is not None:
                import numpy as np

                s = np.asarray(sig, dtype=np.uint64)
                payload["sig"] = s.astype("<u8").tobytes().hex()
                payload["bands"] = band_keys(s)
            article_points.append(
                models.PointStruct(id=_point_id(article.id, gen), vector={}, payload=payload)
            )
            chunk_counts[article.id] = len(chunks)
        for article, digest, of_id, similarity in self._put_copies.values():
            payload = _payload(article, digest, gen, now, kind="copy", of_id=of_id, similarity=similarity)
            article_points.append(
                models.PointStruct(id=_point_id(article.id, gen), vector={}, payload=payload)
            )
        for batch in range(0, len(points), 256):
            c.client.upsert(c.chunks, points=points[batch : batch + 256], wait=True)
        for batch in range(0, len(article_points), 256):
            c.client.upsert(c.articles, points=article_points[batch : batch + 256], wait=True)
        live = {aid: n for aid, n in chunk_counts.items() if aid not in self._removes or aid in self._puts}
        meta = {
            "generation": gen,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "embedder": self.embedder,
            "chunking": self.chunking,
            "counts": {"articles": len(live), "chunks": sum(live.values()), "vectors": sum(live.values())},
            "next_id": next_id,
            "meta": {**(base.all_meta() if base else {}), **self._meta},
            "versions": files.versions(),
        }
        # Every chunk point carries `source_key` and `day` only if the collection was made so.
        if base is None or base.meta_point.get("filter_fields") == 1:
            meta["filter_fields"] = 1
        # The commit point: one point rewritten (and for new collections, the record naming them).
        c.client.upsert(c.meta, points=[models.PointStruct(id=_META_ID, vector={}, payload=meta)], wait=True)
        if recorded(self.root) != self.spec:
            self.root.mkdir(parents=True, exist_ok=True)
            files._write_durably(self.root / STORE_FILE, json.dumps(self.spec, indent=1).encode("utf-8"))
            if self._replaces is not None:
                Collections(self.root, self._replaces).drop()
        log.info(
            "committed generation %d on Qdrant: %d articles, %d chunks", gen, len(live), sum(live.values())
        )
        return f"qdrant-{gen:06d}"


def _day(d: date) -> int:
    """A date as a payload integer that orders like it: 2026-03-12 -> 20260312."""
    return d.year * 10_000 + d.month * 100 + d.day


class Selection(Sequence[int]):
    """The chunk ids a filter selects on Qdrant, held as payload conditions (`must`; None:
    nothing passes): the search sends the conditions, and the ids are read (once) only by a
    caller that walks them."""

    def __init__(self, snap: QdrantSnapshot, must: list[Any] | None) -> None:
        self.snap = snap
        self.must = must
        self._ids: list[int] | None = [] if must is None else None
        self._count: int | None = 0 if must is None else None

    def ids(self) -> list[int]:
        if self._ids is None:
            c = self.snap.where
            self._ids = sorted(
                int(p.id) for p in c.scroll(c.chunks, self.snap._seen(*self.must), fields=False)
            )
        return self._ids

    def __len__(self) -> int:
        if self._count is None:
            if self._ids is not None:
                self._count = len(self._ids)
            else:
                c = self.snap.where
                flt = self.snap._seen(*(self.must or ()))
                self._count = int(c.client.count(c.chunks, count_filter=flt, exact=True).count)
        return self._count

    def __getitem__(self, i: Any) -> Any:
        return self.ids()[i]

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids())


def _payload(article: Article, digest: str, gen: int, now: float, **extra: Any) -> dict[str, Any]:
    return {
        "aid": article.id, "title": article.title, "date": article.date, "url": article.url,
        "author": article.author, "source": article.source, "path": article.path, "hash": digest,
        "text": article.text, "chars": len(article.text), "added_at": now, "gen_added": gen, **extra,
    }  # fmt: skip
