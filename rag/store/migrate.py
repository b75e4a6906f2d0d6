"""Moving an index between stores (`rag migrate --to qdrant|faiss`): every article with its
chunks, vectors and signature, every syndicated copy and the feed state, written as one
commit of the other store; the index folder's `STORE` file switches readers over at the end,
then what the old store held is removed."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..types import Article, Chunk
from . import files, qdrant
from .transaction import Transaction

log = logging.getLogger(__name__)


def migrate(
    root: str | Path,
    *,
    to: str,
    qdrant_url: str = "",
    ann_threshold: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """Move the index at `root` to the store `to`; returns the new store's generation."""
    from . import open_index, store_of

    root = Path(root)
    if to not in ("faiss", "qdrant"):
        raise ConfigError(f"--to must be faiss or qdrant, got {to!r}")
    source_kind = store_of(root)
    if source_kind == to:
        raise ConfigError(f"{root} is on the {to} store already")
    with files.writer_lock(root):
        source = open_index(root)
        if to == "qdrant":
            # New collections: the folder's STORE file names them once they are complete.
            target: Any = qdrant.QdrantTransaction(
                root, url=qdrant_url, embedder=source.embedder, chunking=source.manifest["chunking"]
            )
        else:
            target = Transaction(
                root,
                embedder=source.embedder,
                chunking=source.manifest["chunking"],
                rebuild=True,
                ann_threshold=ann_threshold,
            )
        signatures = dict(source.signatures())
        # Every chunk once, grouped by article (not a filtered search per article).
        rows: dict[str, list[Any]] = {}
        every = source.chunk_ids()
        for lo in range(0, len(every), 1024):
            for row in source.chunks(every[lo : lo + 1024]):
                rows.setdefault(row.article_id, []).append(row)
        articles = source.articles()
        for n, info in enumerate(articles):
            found = source.article(info.id)
            assert found is not None
            article = Article(
                info.id, found[1], info.title, info.date, info.url, info.author, info.source, info.path
            )
            mine = sorted(rows.get(info.id, []), key=lambda r: r.ordinal)
            chunks = [Chunk(r.article_id, r.ordinal, r.start, r.end, r.text) for r in mine]
            target.put(
                article, chunks, source.vectors([r.id for r in mine]), signature=signatures.get(info.id)
            )
            if progress:
                progress(n + 1, len(articles))
        for cid, (of_id, _) in source.copy_records().items():
            copy = source.copy_article(cid)
            similarity = next(
                (c.similarity for c in source.copies_of([of_id]).get(of_id, ()) if c.article_id == cid), 0.0
            )
            if copy is not None:
                target.put_copy(copy, of_id, similarity)
        for key, value in source.all_meta().items():
            target.set_meta(key, value)
        source.close()
        old_spec = qdrant.recorded(root)
        gen = target.commit()
        if to == "faiss":
            # The FAISS generation is complete: readers switch when the record goes.
            (root / qdrant.STORE_FILE).unlink()
        _forget(root, old_spec)
    log.info("moved %s from %s to %s: %d articles", root, source_kind, to, len(articles))
    return gen


def _forget(root: Path, old_spec: dict[str, Any] | None) -> None:
    """Remove what the store the index left held (its Qdrant collections, or its FAISS
    generations and segments); saved chats, uploads and collections stay."""
    if old_spec is not None:
        qdrant.Collections(root, old_spec).drop()
        if not old_spec.get("url"):
            qdrant.forget_client(root)
            shutil.rmtree(root / qdrant.LOCAL_FOLDER, ignore_errors=True)
        return
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith(("gen-", "seg-")):
            shutil.rmtree(path, ignore_errors=True)
    for name in (files.CURRENT, files.VERIFIED):
        (root / name).unlink(missing_ok=True)
