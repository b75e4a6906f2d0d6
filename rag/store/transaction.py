"""Writing: changes staged against the live generation and committed as the next one, which
adds at most one segment for what was added and records what was removed; small segments are
folded together as they accumulate, large ones by size tier (`_tiered`), and `compact` folds
the rest."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, IndexCorrupt, IndexNotFound
from ..types import Article, Chunk
from . import files
from .ann import FLAT, default_ann_threshold
from .files import FORMAT_VERSION, MANIFEST, list_generations, read_pointer
from .segment import Segment, SegmentWriter, article_hash
from .snapshot import Snapshot

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

# A commit folds its small segments together once there are this many of them...
MERGE_AT = 8
# ...as long as what it rewrites stays under this many live chunks (a commit stays cheap);
# larger folds are `rag compact`'s.
MERGE_BUDGET = 10_000
# Large segments (from MERGE_BUDGET live chunks) are folded by size tier, each tier TIER times
# the one below: a commit that adds a large segment folds its tier once TIER_AT segments share
# it (cascading into the tier the fold lands in), as Lucene's tiered merge policy does. Every
# large segment has its own coarse quantizer and the neighbours of a question are spread over
# all of them, so many equal ones cost a scan each (measured at 1M: 20 of 50k searched 2.35x
# slower than one); tiers bound their number by log_TIER(size), and each chunk is rewritten
# about as often.
TIER = 4
TIER_AT = 4
# Past this many segments (or this share of dead rows) an index asks for `rag compact`.
COMPACT_SEGMENTS = 16
COMPACT_DEAD = 0.2


class Staged:
    """What a transaction stages, whatever store commits it: articles put (with chunks,
    vectors and signature), copies put, ids removed, feed state; and the answers ingest asks
    of it before the commit (is this id indexed, what is its hash, what copies does it have).
    `base` is the live generation; `_replaced` holds ids the store still has that count as
    gone (a rebuild's)."""

    base: Any

    def _built_with(
        self,
        embedder: dict[str, Any],
        agreement: Callable[[dict[str, Any]], float] | None,
        probe: Callable[[], dict[str, Any]] | None,
    ) -> None:
        """`self.embedder`: the record of what embeds this commit, checked against the index's."""
        self.embedder = embedder
        if self.base is not None:
            self.base.check_embedder(
                embedder["name"],
                embedder["dimension"],
                backend=embedder.get("backend", "torch"),
                agreement=agreement,
            )
            # The index keeps the record of the backend that made it and its probe.
            built = self.base.embedder
            self.embedder = {**embedder, **{k: built[k] for k in ("backend", "probe") if k in built}}
        if not self.embedder.get("probe") and probe is not None:
            # Computed only for an index that has none yet (new, or from before probes).
            self.embedder = {**self.embedder, "probe": probe()}

    def _stage(self, hashes: dict[str, str], copies: dict[str, tuple[str, str]], replaced: set[str]) -> None:
        self._hashes = hashes
        self._copies = copies
        self._replaced = replaced
        self._puts: dict[str, tuple[Article, str, list[Chunk], np.ndarray, np.ndarray | None]] = {}
        self._removes: set[str] = set(replaced)
        self._put_copies: dict[str, tuple[Article, str, str, float]] = {}
        self._meta: dict[str, str] = {}

    def close(self) -> None:
        if self.base is not None:
            self.base.close()

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
        if article_id in self._hashes or article_id in self._copies or article_id in self._replaced:
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


class Transaction(Staged):
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
        self._built_with(embedder, agreement, probe)
        holders = self.base.holders() if self.base else {}
        self._holder = {aid: seg for aid, (_, seg) in holders.items()}
        self._holder.update(self.base.copy_holders() if self.base else {})
        self._stage(
            {aid: h for aid, (h, _) in holders.items()}, self.base.copy_records() if self.base else {}, set()
        )

    def commit(self, *, compact: str = "") -> str:
        """Write the next generation and make it live; returns its name. Only what changed
        is written: a segment for the added articles and copies, and the removed ids in the
        manifest. `compact`: "small" folds every segment but the largest (and the largest
        too when a fifth of it is dead), "all" folds everything into one."""
        import numpy as np

        base = self.base
        manifest = base.manifest if base else {}
        gens = list_generations(self.root)
        number = int(gens[-1].split("-")[1]) + 1 if gens else 1
        gen = f"gen-{number:06d}"
        next_id = base.next_id() if base else 0
        # Past every segment on disk too: a rebuild has no base, and what a crashed commit
        # left is never overwritten while a kept generation may list a folder of that name.
        next_segment = max(int(manifest.get("next_segment", 1)), files.next_free_segment(self.root))
        meta = {**(base.all_meta() if base else {}), **self._meta}

        # The segments this generation keeps, each with the ids it no longer serves.
        gone: dict[str, set[str]] = {}
        for aid in self._removes:
            holder = self._holder.get(aid)
            if holder is not None:
                gone.setdefault(holder, set()).add(aid)
        records: list[dict[str, Any]] = []
        for seg in base.segments if base else []:
            record = {k: v for k, v in seg.record.items() if k != "legacy"}
            record["deleted"] = sorted(set(record.get("deleted") or ()) | gone.get(seg.name, set()))
            records.append(record)

        # New segments are built on the index's coarse quantizer: searched with the others as one.
        reference = _reference(base.segments) if base else None
        written: list[str] = []
        try:
            if self._puts or self._put_copies:
                name = f"seg-{next_segment:06d}"
                next_segment += 1
                writer = SegmentWriter(self.root, name)
                written.append(name)
                try:
                    ids: list[np.ndarray] = []
                    vecs: list[np.ndarray] = []
                    for article, digest, chunks, vectors, sig in self._puts.values():
                        chunk_ids = np.arange(next_id, next_id + len(chunks), dtype=np.int64)
                        next_id += len(chunks)
                        writer.put(article, digest, chunk_ids, chunks, sig)
                        if len(chunks):
                            ids.append(chunk_ids)
                            vecs.append(np.asarray(vectors, dtype=np.float32))
                    for article, digest, of_id, similarity in self._put_copies.values():
                        writer.put_copy(article, digest, of_id, similarity)
                    dim = int(self.embedder["dimension"])
                    records.append(
                        writer.finish(
                            np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64),
                            np.vstack(vecs) if vecs else np.zeros((0, dim), dtype=np.float32),
                            dimension=dim,
                            threshold=self.ann_threshold,
                            reference=reference,
                        )
                    )
                except BaseException:
                    writer.abandon()
                    raise
            records, counts, folded = self._fold(
                records, compact, f"seg-{next_segment:06d}", written, reference
            )
            next_segment += int(folded)
        except BaseException:
            for name in written:
                shutil.rmtree(self.root / name, ignore_errors=True)
            raise

        largest = max(records, key=lambda r: r["counts"].get("chunks", 0), default=None)
        new_manifest = {
            "format_version": FORMAT_VERSION,
            "generation": number,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "embedder": self.embedder,
            "chunking": self.chunking,
            "index_type": largest["index_type"] if largest else FLAT,
            "index_params": dict(largest["index_params"])
            if largest
            else {"ann_threshold": self.ann_threshold},
            "metric": "inner_product",
            "versions": files.versions(),
            "counts": counts,
            "next_id": next_id,
            "next_segment": next_segment,
            "meta": meta,
            "segments": records,
        }
        raw = json.dumps(new_manifest, indent=1).encode("utf-8")
        tmp = self.root / (gen + ".tmp")
        for leftover in (self.root / gen, tmp):
            if leftover.exists():
                shutil.rmtree(leftover)
        tmp.mkdir(parents=True)
        files._write_durably(tmp / MANIFEST, raw)
        os.replace(tmp, self.root / gen)
        files._fsync(self.root)
        # The commit point: one atomic rename of the pointer.
        files.point_at(self.root, gen, raw)
        log.info(
            "committed %s: %d articles, %d chunks in %d segment(s)",
            gen,
            counts["articles"],
            counts["chunks"],
            len(records),
        )
        self.close()
        files.collect_garbage(self.root, [gen, self._keep or ""])
        return gen

    def _fold(
        self,
        records: list[dict[str, Any]],
        compact: str,
        name: str,
        written: list[str],
        reference: tuple[Any, dict[str, Any]] | None,
    ) -> tuple[list[dict[str, Any]], dict[str, int], bool]:
        """The segments after folding (as `commit` describes) into a segment `name`, without
        the dead ones; the live counts of the whole generation; whether anything was folded."""
        opened = [Segment(self.root, r) for r in records]
        try:
            sizes = {s.name: _live(s) for s in opened}
            kept = [s for s in opened if sizes[s.name]["articles"] or sizes[s.name]["copies"]]
            new = written[0] if written else None
            fold = _to_fold(kept, sizes, compact, self.ann_threshold, new=new)
            folding = len(fold) >= 2 or bool(fold and fold[0].deleted)
            if folding:
                writer = SegmentWriter(self.root, name)
                written.append(name)
                try:
                    import numpy as np

                    parts = [writer.take(s) for s in fold]
                    dim = int(self.embedder["dimension"])
                    ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
                    vecs = np.vstack([p[1] for p in parts]) if parts else np.zeros((0, dim), dtype=np.float32)
                    merged = writer.finish(
                        ids,
                        vecs,
                        dimension=dim,
                        threshold=self.ann_threshold,
                        reference=None if compact == "all" else reference,
                    )
                except BaseException:
                    writer.abandon()
                    raise
                log.info("folded %d segments (%d live chunks) into %s", len(fold), len(ids), name)
                folded = {s.name for s in fold}
                out = [s.record for s in kept if s.name not in folded]
                out = [{k: v for k, v in r.items() if k != "legacy"} for r in out] + [merged]
                counts = {
                    "articles": sum(sizes[s.name]["articles"] for s in kept),
                    "chunks": sum(sizes[s.name]["chunks"] for s in kept),
                }
            else:
                out = [{k: v for k, v in s.record.items() if k != "legacy"} for s in kept]
                counts = {
                    "articles": sum(sizes[s.name]["articles"] for s in kept),
                    "chunks": sum(sizes[s.name]["chunks"] for s in kept),
                }
            counts["vectors"] = counts["chunks"]
            return out, counts, folding
        finally:
            for s in opened:
                s.close()


def _live(seg: Segment) -> dict[str, int]:
    """What a segment still serves: articles, chunks and copies."""
    live, args = seg.live_sql("id")
    articles = seg.db.execute(f"SELECT COUNT(*) FROM articles WHERE {live}", args).fetchone()[0]
    copies = (
        seg.db.execute(f"SELECT COUNT(*) FROM copies WHERE {live}", args).fetchone()[0]
        if seg.has_copies
        else 0
    )
    return {"articles": int(articles), "chunks": int(seg.live), "copies": int(copies)}


def _reference(segments: list[Segment]) -> tuple[Any, dict[str, Any]] | None:
    """The coarse quantizer new segments are built on (with its parameters): that of the IVF
    segments trained on the most vectors; None while the index has none."""
    ivf = [s for s in segments if s.index_type != FLAT and s.index_params.get("nlist")]
    if not ivf:
        return None
    best = max(ivf, key=lambda s: (int(s.index_params.get("trained_on", 0)), s.rows))
    # Rows, dead ones included: they stay in the lists and are scanned. Unknown for a
    # segment written before quantizer keys (its sharers cannot be counted).
    shared = sum(s.rows for s in ivf if s.coarse == best.coarse) if best.coarse is not None else None
    return best.quantizer(), {**best.index_params, "shared_rows": shared}


def _tier(chunks: int) -> int:
    """A large segment's size tier: 0 below TIER x MERGE_BUDGET live chunks, then one up per
    factor of TIER."""
    return int(math.log(max(chunks, MERGE_BUDGET) / MERGE_BUDGET, TIER) + 1e-9)


def _tiered(segments: list[Segment], sizes: dict[str, dict[str, int]], new: str | None) -> list[Segment]:
    """The large segments to fold because the commit's new segment `new` made its tier hold
    `TIER_AT`, with those of every tier the fold then lands in while it fills that one too;
    none when `new` is small (a small commit never rewrites large segments)."""
    chunks = {s.name: sizes[s.name]["chunks"] for s in segments}
    if new is None or chunks.get(new, 0) < MERGE_BUDGET:
        return []
    large = [s for s in segments if chunks[s.name] >= MERGE_BUDGET]
    fold: list[Segment] = []
    tier = _tier(chunks[new])
    while True:
        group = [s for s in large if _tier(chunks[s.name]) == tier and s not in fold]
        if len(group) + (1 if fold else 0) < TIER_AT:
            break
        fold += group
        landed = _tier(sum(chunks[s.name] for s in fold))
        if landed == tier:
            break
        tier = landed
    return fold


def _to_fold(
    segments: list[Segment],
    sizes: dict[str, dict[str, int]],
    compact: str,
    threshold: int,
    *,
    new: str | None = None,
) -> list[Segment]:
    """Which segments to fold into one: as `compact` asks; all of them when they hold
    `threshold` vectors between them but no IVF segment yet (the index turns approximate);
    a tier of large segments the new one filled (`_tiered`); else the smallest ones once
    there are `MERGE_AT` small ones, as many as fit `MERGE_BUDGET` live chunks."""
    if not segments:
        return []
    by_size = sorted(segments, key=lambda s: (sizes[s.name]["chunks"], s.name))
    total = sum(sizes[s.name]["chunks"] for s in segments)
    if not compact and total >= threshold and all(s.index_type == FLAT for s in segments):
        return by_size if len(by_size) > 1 else []
    if compact == "all":
        return by_size if len(by_size) > 1 or by_size[0].deleted else []
    if compact == "small":
        *rest, largest = by_size
        dead = 1 - sizes[largest.name]["chunks"] / largest.rows if largest.rows else 0.0
        return [*rest, largest] if dead >= COMPACT_DEAD else rest
    tiered = _tiered(segments, sizes, new)
    if tiered:
        return tiered
    small = [s for s in by_size if sizes[s.name]["chunks"] < MERGE_BUDGET]
    if len(small) < MERGE_AT:
        return []
    fold: list[Segment] = []
    total = 0
    for s in small:
        if total + sizes[s.name]["chunks"] > MERGE_BUDGET and len(fold) >= 2:
            break
        fold.append(s)
        total += sizes[s.name]["chunks"]
    return fold


def wants_compaction(snapshot: Snapshot) -> bool:
    """Whether `rag compact` would help: many segments, or many dead rows."""
    segs = snapshot.segments
    dead = sum(len(s.dead_chunks()) for s in segs)
    rows = sum(s.rows for s in segs)
    return len(segs) > COMPACT_SEGMENTS or (rows > 0 and dead / rows >= COMPACT_DEAD)


def compact(
    root: str | os.PathLike[str], *, everything: bool = False, ann_threshold: int | None = None
) -> str | None:
    """Fold the index's segments together (all into one with `everything`, else all but the
    largest) under the writer lock; returns the new generation, or None when there was
    nothing to fold."""
    root = Path(root)
    with files.writer_lock(root):
        base = Snapshot.open(root)
        try:
            sizes = {s.name: _live(s) for s in base.segments}
            kept = [s for s in base.segments if sizes[s.name]["articles"] or sizes[s.name]["copies"]]
            fold = _to_fold(kept, sizes, "all" if everything else "small", 0)
            if len(fold) < 2 and not (fold and fold[0].deleted) and len(kept) == len(base.segments):
                return None
            tx = Transaction(
                root,
                embedder=base.embedder,
                chunking=base.manifest["chunking"],
                ann_threshold=ann_threshold
                or int(base.index_params.get("ann_threshold") or default_ann_threshold()),
            )
        finally:
            base.close()
        return tx.commit(compact="all" if everything else "small")
