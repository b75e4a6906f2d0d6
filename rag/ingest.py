"""loaders -> chunking -> embedding -> store, committed as one generation."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from .chunking import chunk_text
from .embedding import Embedder, Progress
from .errors import InputError
from .loaders import iter_articles
from .settings import Settings
from .store import Transaction, article_hash, writer_lock
from .types import Article, Chunk, IngestReport

log = logging.getLogger(__name__)

# Titles can be long; what is embedded must stay within what the embedder reads.
_TITLE_TOKENS = 32


def embed_text(title: str, chunk: str) -> str:
    """What is embedded for a chunk: its article's title, then the chunk."""
    return f"{title}\n{chunk}" if title else chunk


def chunk_article(article: Article, embedder: Embedder, settings: Settings) -> tuple[list[Chunk], str]:
    """Chunks of an article sized so that title + chunk fit the embedder, and the
    (possibly shortened) title used in the embedded text."""
    title = article.title
    offsets = embedder.token_offsets(title) if title else []
    if len(offsets) > _TITLE_TOKENS:
        title = title[: offsets[_TITLE_TOKENS - 1][1]]
    # 2 special tokens ([CLS], [SEP]) and a margin for tokens merging across the join.
    budget = embedder.max_seq_length - 2 - min(len(offsets), _TITLE_TOKENS) - 2
    max_tokens = max(16, min(settings.chunk_tokens, budget))
    chunks = chunk_text(
        article.id,
        article.text,
        embedder.token_offsets,
        max_tokens=max_tokens,
        overlap=min(settings.chunk_overlap, max_tokens // 2),
    )
    return chunks, title


def ingest(
    paths: Iterable[str | os.PathLike[str]],
    *,
    settings: Settings,
    embedder: Embedder,
    fields: Mapping[str, str] | None = None,
    rebuild: bool = False,
    progress: Progress | None = None,
    on_error: Callable[[InputError], None] | None = None,
) -> IngestReport:
    """Index files and folders into `settings.index`; unreadable inputs are reported,
    the rest committed as one new generation."""
    articles = iter_articles(paths, max_file_mb=settings.max_file_mb, fields=fields)
    return ingest_articles(
        articles,
        settings=settings,
        embedder=embedder,
        rebuild=rebuild,
        progress=progress,
        on_error=on_error,
    )


def ingest_articles(
    articles: Iterable[Article | InputError],
    *,
    settings: Settings,
    embedder: Embedder,
    rebuild: bool = False,
    progress: Progress | None = None,
    on_error: Callable[[InputError], None] | None = None,
) -> IngestReport:
    start = time.perf_counter()
    root = Path(settings.index)
    added: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    failed: list[tuple[str, str]] = []
    with writer_lock(root):
        tx = Transaction(
            root,
            embedder={
                "name": embedder.name,
                "dimension": embedder.dimension,
                "max_seq_length": embedder.max_seq_length,
                "backend": embedder.backend,
            },
            chunking={
                "chunk_tokens": settings.chunk_tokens,
                "chunk_overlap": settings.chunk_overlap,
                "title_tokens": _TITLE_TOKENS,
                "splitter": "sentences",
            },
            rebuild=rebuild,
            ann_threshold=settings.ann_threshold,
            agreement=embedder.agreement,
            probe=embedder.probe,
        )
        pending: dict[str, tuple[Article, list[Chunk], list[str]]] = {}
        for item in articles:
            if isinstance(item, InputError):
                failed.append((item.path, item.reason))
                if on_error:
                    on_error(item)
                continue
            digest = article_hash(item)
            if item.id in pending:
                # The same id twice in one batch: the later record wins.
                del pending[item.id]
            elif tx.hash_of(item.id) == digest:
                unchanged.append(item.id)
                continue
            chunks, title = chunk_article(item, embedder, settings)
            pending[item.id] = (item, chunks, [embed_text(title, c.text) for c in chunks])

        texts = [t for _, _, ts in pending.values() for t in ts]
        vectors = embedder.encode(texts, progress=progress)
        pos = 0
        for aid, (article, chunks, _) in pending.items():
            (updated if tx.hash_of(aid) is not None else added).append(aid)
            tx.put(article, chunks, vectors[pos : pos + len(chunks)])
            pos += len(chunks)
        if tx.dirty:
            tx.commit()
    report = IngestReport(
        added=tuple(added),
        updated=tuple(updated),
        unchanged=tuple(unchanged),
        failed=tuple(failed),
        chunks=len(texts),
        seconds=time.perf_counter() - start,
    )
    log.info(
        "ingest: %d added, %d updated, %d unchanged, %d failed, %d chunks in %.1f s",
        len(added),
        len(updated),
        len(unchanged),
        len(failed),
        len(texts),
        report.seconds,
    )
    return report


def remove(article_ids: Iterable[str], *, settings: Settings) -> list[str]:
    """Remove articles by id; returns the ids that were not in the index."""
    root = Path(settings.index)
    missing: list[str] = []
    with writer_lock(root):
        from .store import Snapshot

        snap = Snapshot.open(root)
        tx = Transaction(
            root,
            embedder=snap.embedder,
            chunking=snap.manifest["chunking"],
            ann_threshold=settings.ann_threshold,
        )
        snap.close()
        for aid in article_ids:
            if not tx.remove(aid):
                missing.append(aid)
        if tx.dirty:
            tx.commit()
    return missing
