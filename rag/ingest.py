"""loaders / web / feeds -> dedup -> chunking -> embedding -> store, committed as one generation."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import feeds, web
from .chunking import chunk_text
from .dedup import Copies, signature, similarity
from .embedding import Encoder, Progress
from .errors import ConfigError, IndexNotFound, InputError
from .feeds import FeedState
from .loaders import discover, load_file
from .settings import Settings
from .store import Transaction, article_hash, begin, open_index, writer_lock
from .types import Article, Chunk, IngestReport
from .web import is_url

if TYPE_CHECKING:
    import httpx
    import numpy as np

log = logging.getLogger(__name__)

# Titles can be long; what is embedded must stay within what the embedder reads.
_TITLE_TOKENS = 32


def embed_text(title: str, chunk: str) -> str:
    """What is embedded for a chunk: its article's title, then the chunk."""
    return f"{title}\n{chunk}" if title else chunk


def chunk_article(article: Article, embedder: Encoder, settings: Settings) -> tuple[list[Chunk], str]:
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
    embedder: Encoder,
    fields: Mapping[str, str] | None = None,
    rebuild: bool = False,
    prune: bool = False,
    progress: Progress | None = None,
    on_error: Callable[[InputError], None] | None = None,
) -> IngestReport:
    """Index files, folders, web pages and feeds (URLs) into `settings.folder`; unreadable
    inputs are reported, the rest committed as one new generation.

    With `prune`, the articles whose files under the given folders no longer exist are
    removed (a syndicated copy of a removed article takes its place)."""
    targets = [str(p) for p in paths]
    state = FeedState.from_json(None if rebuild else _stored_meta(settings, feeds.META_KEY))
    articles = iter_inputs(targets, max_file_mb=settings.max_file_mb, fields=fields, state=state)
    return ingest_articles(
        articles,
        settings=settings,
        embedder=embedder,
        rebuild=rebuild,
        progress=progress,
        on_error=on_error,
        prune=[t for t in targets if not is_url(t) and Path(t).is_dir()] if prune else (),
        state=state,
    )


def iter_inputs(
    targets: Iterable[str],
    *,
    max_file_mb: float,
    fields: Mapping[str, str] | None = None,
    state: FeedState | None = None,
) -> Iterator[Article | InputError]:
    """The articles of files, folders, page URLs and feeds (URLs or files), with an
    `InputError` for each input that cannot be read; one HTTP client serves the batch."""
    state = state if state is not None else FeedState()
    http: httpx.Client | None = None

    def client() -> httpx.Client:
        nonlocal http
        if http is None:
            http = web.client()
        return http

    try:
        for target in targets:
            if is_url(target):
                try:
                    yield from _url_items(target, client, max_file_mb=max_file_mb, state=state)
                except InputError as e:
                    yield e
                continue
            for item in discover([target]):
                if isinstance(item, InputError):
                    yield item
                    continue
                try:
                    if item.suffix.lower() in feeds.FEED_EXTS:
                        key = str(item.resolve())
                        parsed = feeds.parse(item.read_bytes(), str(item))
                        yield from feeds.entries(
                            parsed, key=key, state=state, http=client, max_file_mb=max_file_mb
                        )
                    else:
                        yield from load_file(item, max_file_mb=max_file_mb, fields=fields)
                except InputError as e:
                    yield e
    finally:
        if http is not None:
            http.close()


def _url_items(
    url: str, client: Callable[[], httpx.Client], *, max_file_mb: float, state: FeedState
) -> Iterator[Article | InputError]:
    fetched = web.fetch(client(), url, max_file_mb=max_file_mb, headers=state.headers(url))
    if fetched.not_modified:
        log.info("%s: not modified since the last pass", url)
        return
    web.check_readable(fetched)
    if web.looks_like_feed(fetched.body, fetched.content_type):
        parsed = feeds.parse(fetched.body, url)
        yield from feeds.entries(
            parsed, key=url, state=state, http=client, max_file_mb=max_file_mb, fetched=fetched
        )
        return
    html = fetched.text()
    yield web.page_article(html, url=web.canonical_url(html, fetched.final_url), name=url)


def _stored_meta(settings: Settings, key: str) -> str | None:
    try:
        # Not verified here: the transaction that follows verifies the generation once.
        snap = open_index(settings.folder, verify=False)
    except IndexNotFound:
        return None
    try:
        return snap.meta(key)
    finally:
        snap.close()


def ingest_articles(
    articles: Iterable[Article | InputError],
    *,
    settings: Settings,
    embedder: Encoder | None,
    rebuild: bool = False,
    progress: Progress | None = None,
    on_error: Callable[[InputError], None] | None = None,
    prune: Sequence[str | os.PathLike[str]] = (),
    remove: Iterable[str] = (),
    state: FeedState | None = None,
    make_embedder: Callable[[], Encoder] | None = None,
) -> IngestReport:
    """Stage articles (near-duplicates of indexed ones as their copies), removals (`remove`
    ids; with `prune`, articles whose files under those folders are gone) and feed state,
    and commit them as one generation. Without an `embedder`, `make_embedder` makes one if
    a removal turns out to need it (a copy promoted in place of what was removed)."""
    start = time.perf_counter()
    root = settings.folder
    added: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    failed: list[tuple[str, str]] = []
    copies: list[tuple[str, str]] = []
    removed: list[str] = []
    promoted: list[str] = []
    made: list[Encoder] = [embedder] if embedder is not None else []

    def the_embedder() -> Encoder:
        if not made:
            if make_embedder is None:
                raise ConfigError("an embedder is needed to index a copy in place of a removed article")
            made.append(make_embedder())
        return made[0]

    with writer_lock(root):
        tx = _transaction(root, settings, the_embedder, rebuild=rebuild, eager=not remove)
        originals = _Originals(tx, settings.dedup_threshold)
        pending: dict[str, tuple[Article, np.ndarray | None]] = {}
        # Indexed articles no longer indexed after this commit, with what their copies go to.
        vacated: dict[str, str | None] = {}
        for item in articles:
            if isinstance(item, InputError):
                failed.append((item.path, item.reason))
                if on_error:
                    on_error(item)
                continue
            if item.id in pending:
                # The same id twice in one batch: the later record wins.
                del pending[item.id]
                originals.discard(item.id)
            elif tx.hash_of(item.id) == article_hash(item):
                unchanged.append(item.id)
                continue
            sig, match = originals.match(item)
            was_indexed = tx.is_indexed(item.id)
            if match is not None:
                tx.put_copy(item, match[0], match[1])
                copies.append((item.id, match[0]))
                if was_indexed:
                    vacated[item.id] = match[0]
                continue
            (updated if tx.hash_of(item.id) is not None else added).append(item.id)
            pending[item.id] = (item, sig)
            originals.add(item.id, sig)
            vacated.pop(item.id, None)

        gone = [*remove, *(_pruned(tx, prune) if prune else ())]
        missing: list[str] = []
        for aid in gone:
            was_indexed = tx.is_indexed(aid)
            if tx.remove(aid):
                removed.append(aid)
                originals.discard(aid)
                pending.pop(aid, None)
                if was_indexed:
                    vacated[aid] = None
            else:
                missing.append(aid)
        for aid, new_of in vacated.items():
            heir = _rehome(tx, aid, new_of)
            if heir is not None:
                promoted.append(heir.id)
                pending[heir.id] = (heir, signature(heir.text))

        texts_of = {}
        for aid, (article, _) in pending.items():
            chunks, title = chunk_article(article, the_embedder(), settings)
            texts_of[aid] = (chunks, [embed_text(title, c.text) for c in chunks])
        texts = [t for _, ts in texts_of.values() for t in ts]
        vectors = the_embedder().encode(texts, progress=progress) if texts else None
        pos = 0
        for aid, (article, sig) in pending.items():
            chunks = texts_of[aid][0]
            tx.put(
                article,
                chunks,
                vectors[pos : pos + len(chunks)] if vectors is not None else [],
                signature=sig,
            )
            pos += len(chunks)
        if state is not None and state.changed:
            tx.set_meta(feeds.META_KEY, state.to_json())
        if tx.dirty:
            tx.commit()
    report = IngestReport(
        added=tuple(added),
        updated=tuple(updated),
        unchanged=tuple(unchanged),
        failed=tuple(failed),
        chunks=len(texts),
        seconds=time.perf_counter() - start,
        copies=tuple(copies),
        removed=tuple(removed),
        promoted=tuple(promoted),
        missing=tuple(missing),
    )
    log.info(
        "ingest: %d added, %d updated, %d unchanged, %d copies, %d removed, %d failed, %d chunks in %.1f s",
        len(added),
        len(updated),
        len(unchanged),
        len(copies),
        len(removed),
        len(failed),
        len(texts),
        report.seconds,
    )
    return report


def _transaction(
    root: Path, settings: Settings, embedder: Callable[[], Encoder], *, rebuild: bool, eager: bool
) -> Transaction:
    chunking = {
        "chunk_tokens": settings.chunk_tokens,
        "chunk_overlap": settings.chunk_overlap,
        "title_tokens": _TITLE_TOKENS,
        "splitter": "sentences",
    }
    if not eager:
        # A removal needs no embedder unless a copy is promoted: the index's own record
        # stands for it, and the real one is loaded only then.
        snap = open_index(root, verify=False)  # the transaction verifies it
        record, chunking = snap.embedder, snap.manifest["chunking"]
        snap.close()
        return begin(
            root,
            store=settings.store,
            qdrant_url=settings.qdrant_url,
            embedder=record,
            chunking=chunking,
            ann_threshold=settings.ann_threshold,
        )
    e = embedder()
    return begin(
        root,
        store=settings.store,
        qdrant_url=settings.qdrant_url,
        embedder={
            "name": e.name,
            "dimension": e.dimension,
            "max_seq_length": e.max_seq_length,
            "backend": e.backend,
        },
        chunking=chunking,
        rebuild=rebuild,
        ann_threshold=settings.ann_threshold,
        agreement=e.agreement,
        probe=e.probe,
    )


class _Originals:
    """The indexed articles a new one may copy: candidates from the index's LSH band keys
    (read per article, not all at once), and the articles of this batch in memory."""

    def __init__(self, tx: Transaction, threshold: float) -> None:
        self.tx = tx
        self.threshold = threshold
        self._copies: Copies | None = None
        # Articles of this batch that will be indexed (not yet staged in the transaction).
        self._batch: set[str] = set()

    def _index(self) -> Copies:
        if self._copies is None:
            self._copies = Copies(self.threshold)
        return self._copies

    def match(self, article: Article) -> tuple[np.ndarray | None, tuple[str, float] | None]:
        sig = signature(article.text)
        if sig is None or self.threshold <= 0:
            return sig, None
        found = self._index().original(sig, exclude=[article.id])
        if found is not None and found[0] not in self._batch and not self.tx.is_indexed(found[0]):
            found = None
        if self.tx.base is not None:
            for aid, other in self.tx.base.near(sig).items():
                if aid == article.id or aid in self._batch or not self.tx.is_indexed(aid):
                    continue
                s = similarity(sig, other)
                # The most similar wins; among equals, the smallest id (as `Copies.original`).
                if s >= self.threshold and (found is None or (-s, aid) < (-found[1], found[0])):
                    found = (aid, s)
        return sig, found

    def add(self, article_id: str, sig: np.ndarray | None) -> None:
        self._batch.add(article_id)
        if sig is not None and self.threshold > 0:
            self._index().add(article_id, sig)

    def discard(self, article_id: str) -> None:
        self._batch.discard(article_id)
        if self._copies is not None:
            self._copies.discard(article_id)


def _rehome(tx: Transaction, article_id: str, new_of: str | None) -> Article | None:
    """The copies of an article that is no longer indexed go to `new_of`, or the oldest of
    them is indexed in its place (returned) and the others become its copies."""
    found = tx.copies_of(article_id)
    if not found:
        return None
    heir: Article | None = None
    if new_of is None:
        heir = tx.copy_article(found[0][0])
        tx.remove(found[0][0])
        found = found[1:]
        if heir is None:
            return None
        new_of = heir.id
        log.info("%s is gone: its copy %s is indexed in its place", article_id, heir.id)
    heir_sig = signature(heir.text) if heir is not None else None
    for cid, sim in found:
        copy = tx.copy_article(cid)
        if copy is None:
            continue
        copy_sig = signature(copy.text)
        if heir_sig is not None and copy_sig is not None:
            sim = similarity(heir_sig, copy_sig)
        tx.put_copy(copy, new_of, sim)
    return heir


def _pruned(tx: Transaction, folders: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Articles and copies whose files lie under these folders and no longer exist. A path
    stored relative (to where it was ingested from) that does not resolve under a folder is
    left alone: pruning never guesses."""
    if tx.base is None:
        return []
    roots = [Path(f).resolve() for f in folders]
    out = []
    for aid, path in tx.base.paths():
        if not path or is_url(path):
            continue
        p = Path(path).resolve()
        if any(p.is_relative_to(r) for r in roots) and not p.exists():
            out.append(aid)
    return out


def remove(
    article_ids: Iterable[str], *, settings: Settings, embedder: Callable[[], Encoder] | None = None
) -> list[str]:
    """Remove articles (or recorded copies) by id; returns the ids that were not in the
    index. A removed article's copy is indexed in its place, with the embedder `embedder` makes."""
    report = ingest_articles(
        (), settings=settings, embedder=None, make_embedder=embedder, remove=list(article_ids)
    )
    return list(report.missing)
