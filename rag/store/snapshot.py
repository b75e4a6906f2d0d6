"""One committed generation, read as the union of its segments: safe to search while a
writer commits the next."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EmbedderMismatch
from ..filters import Filters, article_date
from ..types import Article, ArticleInfo, Copy
from .ann import FLAT, together
from .files import MANIFEST, read_manifest, read_pointer, segment_records, verify_generation
from .segment import ChunkRow, Segment, as_json
from .text import bm25, bm25_idf, keyword_query, keyword_words, occurrences, terms

if TYPE_CHECKING:
    import numpy as np

# Lowest cosine between two backends' vectors of the probe texts for one to search the
# other's index: measured 1.0000 for torch and OpenVINO on the same weights.
AGREEMENT = 0.99
# Keyword candidates each segment offers, per result asked for, before the index-wide BM25
# ranks them: a segment's own ranking differs from the index's only by its statistics.
CANDIDATES_PER_RESULT = 2


def check_embedder(
    root: Path,
    built: dict[str, Any],
    name: str,
    dimension: int,
    *,
    backend: str = "torch",
    agreement: Callable[[dict[str, Any]], float] | None = None,
) -> None:
    """Raise unless vectors made by this embedder can be searched against those an index
    records it was `built` with: the same model, and with another backend, vectors of the
    index's probe texts within AGREEMENT cosine of the recorded ones."""
    if built["name"] != name or built["dimension"] != dimension:
        raise EmbedderMismatch(
            f"index {root} was built with embedder {built['name']!r} "
            f"(dimension {built['dimension']}), not {name!r} (dimension {dimension}); "
            f"use --embedder {built['name']} or rebuild with `rag ingest --rebuild`"
        )
    made_by = built.get("backend", "torch")
    if backend == made_by:
        return
    probe = built.get("probe")
    if not probe:
        raise EmbedderMismatch(
            f"index {root} records no probe of its vectors (built before embed "
            f"backends were recorded, by {made_by!r}), so {backend!r} cannot be checked "
            f"against them; use --embed-backend {made_by} or rebuild with `rag ingest --rebuild`"
        )
    cosine = agreement(probe) if agreement is not None else 0.0
    if cosine < AGREEMENT:
        raise EmbedderMismatch(
            f"index {root} was built with embed backend {made_by!r}, whose vectors "
            f"{backend!r} does not reproduce (probe cosine {cosine:.4f} < {AGREEMENT}); "
            f"use --embed-backend {made_by} or rebuild with `rag ingest --rebuild`"
        )


class Reading:
    """What every store's generation answers from its manifest: what built it and how many
    chunks it serves."""

    root: Path
    generation: str
    manifest: dict[str, Any]
    index_type: str
    index_params: dict[str, Any]

    @property
    def embedder(self) -> dict[str, Any]:
        return dict(self.manifest["embedder"])

    def stats(self) -> dict[str, Any]:
        """What `rag stats` shows: what built the index and how much it serves, then what
        the store adds (`_store_stats`)."""
        m = self.manifest
        return {
            "index": str(self.root),
            "generation": self.generation,
            "articles": m["counts"]["articles"],
            "chunks": m["counts"]["chunks"],
            "embedder": m["embedder"]["name"],
            "dimension": m["embedder"]["dimension"],
            "index_type": self.index_type,
            "index_params": self.index_params,
            **self._store_stats(),
            "chunking": m["chunking"],
            "created_at": m["created_at"],
        }

    def _store_stats(self) -> dict[str, Any]:
        return {}

    def check_embedder(
        self,
        name: str,
        dimension: int,
        *,
        backend: str = "torch",
        agreement: Callable[[dict[str, Any]], float] | None = None,
    ) -> None:
        """Raise unless vectors made by this embedder can be searched against the index's."""
        check_embedder(
            self.root, self.manifest["embedder"], name, dimension, backend=backend, agreement=agreement
        )

    def __len__(self) -> int:
        return int(self.manifest["counts"]["chunks"])

    _dates: dict[str, date | None]

    def _in_range(self, article_id: str, raw: str, lo: date | None, hi: date | None) -> bool:
        # Parsed once per snapshot: the generation never changes under it.
        if article_id not in self._dates:
            self._dates[article_id] = article_date(raw)
        day = self._dates[article_id]
        return day is not None and (lo is None or day >= lo) and (hi is None or day <= hi)


class Snapshot(Reading):
    """One committed generation, opened read-only: safe to search while a writer commits."""

    def __init__(
        self, root: Path, gen: str, manifest: dict[str, Any], *, previous: Snapshot | None = None
    ) -> None:
        self.root = root
        self.generation = gen
        self.manifest = manifest
        self.segments: list[Segment] = []
        before = {seg.name: seg for seg in previous.segments} if previous is not None else {}
        try:
            for record in segment_records(manifest, gen):
                seg = Segment(root, record)
                if seg.name in before:
                    seg.adopt(before[seg.name])
                self.segments.append(seg)
        except BaseException:
            self.close()
            raise
        largest = max(self.segments, key=lambda s: s.rows, default=None)
        self.index_type: str = largest.index_type if largest else FLAT
        self.index_params: dict[str, Any] = dict(largest.index_params) if largest else {}
        self._dates: dict[str, date | None] = {}
        self._any_dated: bool | None = None
        self._legacy = manifest.get("format_version") == 1
        self._searchers: tuple[list[Segment], list[_View]] | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, root: str | os.PathLike[str], *, verify: bool = True, previous: Snapshot | None = None
    ) -> Snapshot:
        """The live generation of `root`. With `previous` (an earlier snapshot of the same
        index), the segments both list keep what it had loaded (their vectors above all)."""
        root = Path(root)
        gen, sha = read_pointer(root)
        manifest = verify_generation(root, gen, sha) if verify else read_manifest(root, gen)
        return cls(root, gen, manifest, previous=previous)

    def close(self) -> None:
        for seg in self.segments:
            seg.close()

    @property
    def index(self) -> Any:
        """The FAISS index, for an index of one segment (`rag compact` makes one)."""
        if len(self.segments) != 1:
            raise ValueError(f"{self.root} has {len(self.segments)} segments, not one; search with `search`")
        return self.segments[0].index

    # -- vectors -----------------------------------------------------------------------------

    def search(
        self, vector: np.ndarray, k: int, *, allowed: Sequence[int] | None = None
    ) -> list[tuple[int, float]]:
        """Top-k chunk ids by inner product over every segment; `allowed` restricts them to
        those chunk ids."""
        import faiss
        import numpy as np

        if len(self) == 0 or (allowed is not None and len(allowed) == 0):
            return []
        q = np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32)
        selector = None
        if allowed is not None:
            wanted = np.asarray(allowed, dtype=np.int64)
            dead = [seg.dead_chunks() for seg in self.segments if seg.deleted]
            if dead:
                wanted = np.setdiff1d(wanted, np.concatenate(dead))
                if not len(wanted):
                    return []
            selector = faiss.IDSelectorBatch(wanted)
            k = min(k, len(wanted))
        alone, views = self._searched()
        hits: list[tuple[int, float]] = []
        for seg in alone:
            hits += seg.search(q, k, selector, allowed is not None)
        for view in views:
            hits += view.search(q, k, selector)
        hits.sort(key=lambda h: (-h[1], h[0]))
        return hits[:k]

    def _searched(self) -> tuple[list[Segment], list[_View]]:
        """The segments searched alone, and the views over IVF segments that share a coarse
        quantizer, each searched in one call as if they were one index."""
        with self._lock:
            if self._searchers is None:
                groups: dict[str, list[Segment]] = {}
                alone: list[Segment] = []
                for seg in self.segments:
                    if seg.live == 0:
                        continue
                    if seg.index_type != FLAT and seg.coarse:
                        groups.setdefault(seg.coarse, []).append(seg)
                    else:
                        alone.append(seg)
                views = []
                for members in groups.values():
                    if len(members) == 1:
                        alone.append(members[0])
                    else:
                        views.append(_View(members))
                self._searchers = (alone, views)
            return self._searchers

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of chunk ids (IVF vectors come back from fp16), in order."""
        import numpy as np

        wanted = np.asarray(ids, dtype=np.int64)
        out: np.ndarray | None = None
        found = np.zeros(len(wanted), dtype=bool)
        for seg in self.segments:
            mask = seg.holds(wanted) & ~found
            if not mask.any():
                continue
            rows = np.vstack([seg.index.reconstruct(int(i)) for i in wanted[mask]])
            if out is None:
                out = np.zeros((len(wanted), rows.shape[1]), dtype=np.float32)
            out[mask] = rows
            found |= mask
        if not found.all():
            raise KeyError(f"no chunk {int(wanted[~found][0])} in {self.root}")
        if out is None:
            return np.zeros((0, int(self.manifest["embedder"]["dimension"])), dtype=np.float32)
        return out

    def chunk_ids(self) -> list[int]:
        """Every chunk id this generation serves, ascending."""
        import numpy as np

        parts = [np.setdiff1d(s.ids(), s.dead_chunks(), assume_unique=True) for s in self.segments]
        return sorted(int(i) for p in parts for i in p)

    # -- keywords ----------------------------------------------------------------------------

    def keyword_search(
        self, query: str, k: int, *, allowed: Sequence[int] | None = None
    ) -> list[tuple[int, float]]:
        """Top-k chunks by BM25 over the whole index (SQLite FTS5 finds them; its statistics
        are the index's, not one segment's); scores are positive, higher is better.
        `allowed` restricts them to those chunk ids."""
        match = keyword_query(query)
        if not match or (allowed is not None and len(allowed) == 0) or not self.segments:
            return []
        allowed_json = as_json(allowed) if allowed is not None else None
        if len(self.segments) == 1 and not self.segments[0].deleted:
            # One segment is the whole index: FTS5's own ranking is the index's.
            return self.segments[0].keyword_scores(match, k, allowed_json)
        words = keyword_words(query)
        phrases = terms(words)
        rows, tokens, hits = self._keyword_statistics(words, phrases)
        if rows <= 0:
            return []
        idf = [bm25_idf(rows, h) for h in hits]
        avgdl = tokens / rows
        scored: list[tuple[int, float]] = []
        for seg in self.segments:
            ids = seg.keyword_candidates(match, CANDIDATES_PER_RESULT * k, allowed_json)
            texts = seg.indexed_texts(ids)
            for i, toks in zip(ids, terms([texts[i] for i in ids]), strict=True):
                scored.append((i, bm25(toks, phrases, idf, avgdl)))
        scored.sort(key=lambda h: (-h[1], h[0]))
        return scored[:k]

    def _keyword_statistics(
        self, words: Sequence[str], phrases: Sequence[Sequence[str]]
    ) -> tuple[int, int, list[int]]:
        """Live rows, their tokens, and the live rows holding each phrase, over all segments."""
        rows = tokens = 0
        hits = [0] * len(phrases)
        for seg in self.segments:
            dead = seg.dead_text() if seg.deleted else {"rows": 0, "tokens": 0, "terms": [], "df": {}}
            rows += seg.rows - dead["rows"]
            tokens += seg.tokens() - dead["tokens"]
            singles = seg.term_rows([p[0] for p in phrases if len(p) == 1])
            for n, (word, phrase) in enumerate(zip(words, phrases, strict=True)):
                if len(phrase) == 1:
                    hits[n] += singles.get(phrase[0], 0) - dead["df"].get(phrase[0], 0)
                elif phrase:
                    gone = sum(1 for toks in dead["terms"] if occurrences(toks, phrase))
                    hits[n] += seg.phrase_rows(f'"{word}"') - gone
        return rows, tokens, hits

    def document_frequencies(self, words: Sequence[str]) -> dict[str, int]:
        """How many chunks hold each of these terms (as `terms` makes them); 0 if none."""
        wanted = sorted(set(words))
        out = dict.fromkeys(wanted, 0)
        for seg in self.segments:
            for term, n in seg.term_rows(wanted).items():
                out[term] += n
            if seg.deleted:
                gone = seg.dead_text()["df"]
                for term in wanted:
                    out[term] -= gone.get(term, 0)
        return out

    # -- articles ----------------------------------------------------------------------------

    def filter_chunks(self, filters: Filters) -> list[int]:
        """The chunk ids of the articles that pass `filters`."""
        where: list[str] = []
        args: list[Any] = []
        if filters.ids:
            where.append("id IN (SELECT value FROM json_each(?))")
            args.append(json.dumps(list(filters.ids)))
        if filters.source:
            where.append("py_lower(source) IN (SELECT value FROM json_each(?))")
            args.append(json.dumps([s.lower() for s in filters.source]))
        if filters.author:
            byline = " OR ".join("instr(py_lower(author), ?) > 0" for _ in filters.author)
            where.append(f"({byline})")
            args.extend(a.lower() for a in filters.author)
        lo, hi = filters.date_range
        out: list[int] = []
        for seg in self.segments:
            live, live_args = seg.live_sql("id")
            sql = "SELECT id, date FROM articles WHERE " + " AND ".join([live, *where])
            rows = seg.db.execute(sql, [*live_args, *args]).fetchall()
            if lo or hi:
                rows = [(i, d) for i, d in rows if self._in_range(i, d, lo, hi)]
            ids = [i for i, _ in rows]
            out += [
                int(r[0])
                for r in seg.db.execute(
                    "SELECT id FROM chunks WHERE article_id IN (SELECT value FROM json_each(?))",
                    (json.dumps(ids),),
                )
            ]
        return sorted(out)

    def dated(self) -> bool:
        """Whether any article has a readable date (a question's time can filter them)."""
        if self._any_dated is None:
            self._any_dated = False
            for seg in self.segments:
                live, args = seg.live_sql("id")
                rows = seg.db.execute(f"SELECT id, date FROM articles WHERE date != '' AND {live}", args)
                if any(self._in_range(i, d, None, None) for i, d in rows):
                    self._any_dated = True
                    break
        return self._any_dated

    def chunks(self, ids: Sequence[int]) -> list[ChunkRow]:
        """Rows for `ids`, in the same order."""
        if not ids:
            return []
        by_id: dict[int, ChunkRow] = {}
        for seg in self.segments:
            live, args = seg.live_sql("c.article_id")
            rows = seg.db.execute(
                'SELECT c.id, c.article_id, c.ordinal, c.start, c."end", '
                'substr(a.text, c.start + 1, c."end" - c.start), a.title, a.date, a.url, '
                "a.author, a.source FROM chunks c JOIN articles a ON a.id = c.article_id "
                f"WHERE c.id IN (SELECT value FROM json_each(?)) AND {live}",
                [as_json(ids), *args],
            ).fetchall()
            by_id.update((r[0], ChunkRow(*r)) for r in rows)
        return [by_id[i] for i in ids if i in by_id]

    def _copy_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for seg in self.segments:
            if not seg.has_copies:
                continue
            live, args = seg.live_sql("id")
            for of_id, n in seg.db.execute(
                f"SELECT of_id, COUNT(*) FROM copies WHERE {live} GROUP BY of_id", args
            ):
                counts[of_id] = counts.get(of_id, 0) + n
        return counts

    def articles(self) -> list[ArticleInfo]:
        copies = self._copy_counts()
        rows: list[tuple[Any, ...]] = []
        for seg in self.segments:
            live, args = seg.live_sql("a.id")
            rows += seg.db.execute(
                "SELECT a.id, a.title, a.date, a.url, a.author, a.source, a.path, "
                "(SELECT COUNT(*) FROM chunks c WHERE c.article_id = a.id), length(a.text), a.added_at "
                f"FROM articles a WHERE {live}",
                args,
            ).fetchall()
        rows.sort(key=lambda r: (r[9], r[0]))
        return [ArticleInfo(*r[:9], copies=copies.get(r[0], 0)) for r in rows]

    def copies_of(self, article_ids: Sequence[str]) -> dict[str, tuple[Copy, ...]]:
        """The syndicated copies recorded under each of these indexed articles."""
        if not article_ids:
            return {}
        found: list[tuple[Any, ...]] = []
        for seg in self.segments:
            if not seg.has_copies:
                continue
            live, args = seg.live_sql("id")
            found += seg.db.execute(
                "SELECT of_id, id, title, source, url, date, author, path, similarity, added_at FROM copies "
                f"WHERE of_id IN (SELECT value FROM json_each(?)) AND {live}",
                [json.dumps(list(article_ids)), *args],
            ).fetchall()
        found.sort(key=lambda r: (r[9], r[1]))
        out: dict[str, list[Copy]] = {}
        for row in found:
            out.setdefault(row[0], []).append(Copy(*row[1:9]))
        return {k: tuple(v) for k, v in out.items()}

    def copy_records(self) -> dict[str, tuple[str, str]]:
        """Every recorded copy: its id -> (the indexed article it copies, its content hash)."""
        out: dict[str, tuple[str, str]] = {}
        for seg in self.segments:
            if seg.has_copies:
                live, args = seg.live_sql("id")
                out.update(
                    (r[0], (r[1], r[2]))
                    for r in seg.db.execute(f"SELECT id, of_id, hash FROM copies WHERE {live}", args)
                )
        return out

    def copy_article(self, copy_id: str) -> Article | None:
        """A recorded copy as an article, to index it in place of the one it copied."""
        for seg in self.segments:
            if seg.has_copies and copy_id not in seg.deleted:
                row = seg.db.execute(
                    "SELECT id, text, title, date, url, author, source, path FROM copies WHERE id = ?",
                    (copy_id,),
                ).fetchone()
                if row:
                    return Article(*row)
        return None

    def signatures(self) -> Iterator[tuple[str, np.ndarray]]:
        """Each indexed article's MinHash signature (articles too short to have one are absent)."""
        import numpy as np

        for seg in self.segments:
            if not seg.has_copies:
                continue
            live, args = seg.live_sql("article_id")
            for aid, blob in seg.db.execute(f"SELECT article_id, sig FROM signatures WHERE {live}", args):
                yield aid, np.frombuffer(blob, dtype=np.uint64)

    def near(self, sig: np.ndarray) -> dict[str, np.ndarray]:
        """The indexed articles whose signatures share an LSH band with `sig` (candidate
        near-duplicates, to check against the threshold), with their signatures."""
        from ..dedup import band_keys

        keys = band_keys(sig)
        out: dict[str, np.ndarray] = {}
        for seg in self.segments:
            found = seg.sharing_bands(keys)
            if found:
                out.update(seg.signatures_of(sorted(found)))
        return out

    def meta(self, key: str) -> str | None:
        if not self._legacy:
            value = self.manifest.get("meta", {}).get(key)
            return None if value is None else str(value)
        seg = self.segments[0]
        if not seg.has_meta:
            return None
        row = seg.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def all_meta(self) -> dict[str, str]:
        """Every meta value (feed state, ...), as a commit carries it forward."""
        if not self._legacy:
            return {k: str(v) for k, v in self.manifest.get("meta", {}).items()}
        seg = self.segments[0]
        if not seg.has_meta:
            return {}
        return {k: v for k, v in seg.db.execute("SELECT key, value FROM meta") if k != "next_id"}

    def next_id(self) -> int:
        """The next free chunk id."""
        if not self._legacy:
            return int(self.manifest["next_id"])
        seg = self.segments[0]
        row = (
            seg.db.execute("SELECT value FROM meta WHERE key='next_id'").fetchone() if seg.has_meta else None
        )
        return int(row[0]) if row else int(seg.ids()[-1]) + 1 if len(seg.ids()) else 0

    def article(self, article_id: str) -> tuple[ArticleInfo, str] | None:
        """An article's info and full text, or None."""
        for seg in self.segments:
            if article_id in seg.deleted:
                continue
            row = seg.db.execute(
                "SELECT id, title, date, url, author, source, path, "
                "(SELECT COUNT(*) FROM chunks c WHERE c.article_id = articles.id), length(text), text "
                "FROM articles WHERE id = ?",
                (article_id,),
            ).fetchone()
            if row is not None:
                copies = len(self.copies_of([article_id]).get(article_id, ()))
                return ArticleInfo(*row[:9], copies=copies), row[9]
        return None

    def paths(self) -> list[tuple[str, str]]:
        """(id, path) of every indexed article and recorded copy."""
        rows: list[tuple[str, str]] = []
        for seg in self.segments:
            live, args = seg.live_sql("id")
            rows += seg.db.execute(f"SELECT id, path FROM articles WHERE {live}", args).fetchall()
            if seg.has_copies:
                rows += seg.db.execute(f"SELECT id, path FROM copies WHERE {live}", args).fetchall()
        return rows

    def hashes(self) -> dict[str, str]:
        return {aid: h for aid, (h, _) in self.holders().items()}

    def holders(self) -> dict[str, tuple[str, str]]:
        """Every live indexed article: its id -> (content hash, the segment holding it)."""
        out: dict[str, tuple[str, str]] = {}
        for seg in self.segments:
            live, args = seg.live_sql("id")
            out.update(
                (r[0], (r[1], seg.name))
                for r in seg.db.execute(f"SELECT id, hash FROM articles WHERE {live}", args)
            )
        return out

    def copy_holders(self) -> dict[str, str]:
        """Every live recorded copy: its id -> the segment holding it."""
        out: dict[str, str] = {}
        for seg in self.segments:
            if seg.has_copies:
                live, args = seg.live_sql("id")
                out.update(
                    (r[0], seg.name) for r in seg.db.execute(f"SELECT id FROM copies WHERE {live}", args)
                )
        return out

    def _store_stats(self) -> dict[str, Any]:
        size = (self.root / self.generation / MANIFEST).stat().st_size
        for seg in self.segments:
            size += sum(p.stat().st_size for p in seg.folder.iterdir() if p.is_file())
        return {
            "segments": [
                {"name": s.name, "chunks": s.rows, "live": s.live, "index_type": s.index_type}
                for s in self.segments
            ],
            "bytes": size,
        }


class _View:
    """IVF segments that share a coarse quantizer, searched as one index: the query is assigned
    to its lists once, then the largest segment and, copied together in memory, all the
    others are scanned with that assignment (two scans, whatever the number of segments);
    the rows their generation no longer serves are left out by one selector.

    Measured at 1M vectors, one segment of 900k and 12 small ones: 1.11x the search of all of
    them merged; FAISS's `HStackInvertedLists` over the 13 (no copy) 1.6x, as it copies each
    probed list per query; a scan per segment 1.25x."""

    def __init__(self, members: list[Segment]) -> None:
        import faiss
        import numpy as np

        ordered = sorted(members, key=lambda m: -m.rows)
        self.members = ordered
        self.primary = ordered[0].index
        self.quantizer = faiss.extract_index_ivf(self.primary).quantizer
        self.nprobe = max(int(m.index_params.get("nprobe", 1)) for m in members)
        self.nlist = int(faiss.extract_index_ivf(self.primary).nlist)
        # One other segment is scanned where it is; several are copied together (one scan).
        self.rest = ordered[1].index if len(ordered) == 2 else together([m.index for m in ordered[1:]])
        dead = np.concatenate([m.dead_chunks() for m in members])
        self._dead = faiss.IDSelectorBatch(dead) if len(dead) else None
        self._not_dead = faiss.IDSelectorNot(self._dead) if self._dead is not None else None

    def search(self, q: np.ndarray, k: int, allowed: Any) -> list[tuple[int, float]]:
        """Top-k by inner product; `allowed` (a FAISS IDSelector of live ids) scans every list."""
        import faiss
        import numpy as np

        # A filter can leave the probed lists empty: scan them all (still exact for the
        # allowed vectors, and a filtered search is rarely large).
        nprobe = self.nlist if allowed is not None else self.nprobe
        dist, assign = self.quantizer.search(q, nprobe)
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        selector = allowed or self._not_dead
        if selector is not None:
            params.sel = selector
        hits: list[tuple[int, float]] = []
        for index in (self.primary, self.rest):
            scores = np.empty((1, k), dtype=np.float32)
            labels = np.empty((1, k), dtype=np.int64)
            index.search_preassigned_c(
                1,
                faiss.swig_ptr(q),
                k,
                faiss.swig_ptr(assign),
                faiss.swig_ptr(dist),
                faiss.swig_ptr(scores),
                faiss.swig_ptr(labels),
                False,
                params,
            )
            hits += [(int(i), float(s)) for i, s in zip(labels[0], scores[0], strict=True) if i >= 0]
        return hits
