"""Collections: named indexes under one root, each its own generational folder and library.

The root is the `index` setting. The default collection is the root itself, so an index
built before collections existed is the `default` collection unchanged; a named one lives
in `<root>/collections/<name>/` and holds the same files (generations, `CURRENT`, its own
`chats.sqlite`). Nothing here loads a model: listing and deleting are cheap.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import CollectionNotFound, ConfigError, RagError
from .store import CURRENT, MANIFEST, writer_lock

log = logging.getLogger(__name__)

DEFAULT = "default"
FOLDER = "collections"
# A name is a folder name and part of an API model id (`rag/<name>`): keep it plain.
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")


@dataclass(frozen=True)
class CollectionInfo:
    """A collection and what it holds (read from its live generation's manifest)."""

    name: str
    path: str
    articles: int
    chunks: int

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "path": self.path, "articles": self.articles, "chunks": self.chunks}


def check_name(name: str) -> str:
    """`name` if it can name a collection; raises `ConfigError` saying what may."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"collection name {name!r} is not usable: use 1-48 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit (e.g. 'work')"
        )
    return name


def folder(root: str | os.PathLike[str], name: str) -> Path:
    """The index folder of collection `name` under `root`."""
    name = check_name(name)
    return Path(root) if name == DEFAULT else Path(root) / FOLDER / name


def exists(root: str | os.PathLike[str], name: str) -> bool:
    """The default collection always exists (empty until something is ingested)."""
    return name == DEFAULT or folder(root, name).is_dir()


def names(root: str | os.PathLike[str]) -> list[str]:
    """`default` first, then the named collections in alphabetical order."""
    base = Path(root) / FOLDER
    if not base.is_dir():
        return [DEFAULT]
    found = sorted(p.name for p in base.iterdir() if p.is_dir() and _NAME.fullmatch(p.name))
    return [DEFAULT, *(n for n in found if n != DEFAULT)]


def missing(root: str | os.PathLike[str], name: str) -> CollectionNotFound:
    """The error for a collection that does not exist, listing those that do."""
    have = ", ".join(names(root))
    return CollectionNotFound(
        f"no collection {name!r} in {root} (there are: {have}); "
        f"create it with `rag collections create {name}` "
        f"or ingest into it with `rag ingest --collection {name} PATH...`"
    )


def create(root: str | os.PathLike[str], name: str) -> Path:
    """Make an empty collection; raises `ConfigError` if it exists already."""
    path = folder(root, name)
    if name == DEFAULT or path.exists():
        raise ConfigError(f"collection {name!r} already exists in {root}; see `rag collections list`")
    path.mkdir(parents=True)
    log.info("created collection %s at %s", name, path)
    return path


def delete(root: str | os.PathLike[str], name: str) -> None:
    """Remove a named collection with its articles and chats. The default one is the root
    folder itself and is not deleted: remove its articles instead."""
    if check_name(name) == DEFAULT:
        raise ConfigError(
            "the default collection is the index folder itself and cannot be deleted; "
            "remove its articles with `rag remove ID...` or pick a named collection"
        )
    path = folder(root, name)
    if not path.is_dir():
        raise missing(root, name)
    # Renamed away under its writer lock first: an ingest waiting for the lock finds no
    # collection to write into rather than half a deleted one, and a reader sees it gone at once.
    gone = path.with_name(f".deleting-{name}-{os.getpid()}")
    with writer_lock(path):
        _drop_qdrant(path)
        os.replace(path, gone)
    shutil.rmtree(gone, ignore_errors=True)
    log.info("deleted collection %s", name)


def _drop_qdrant(path: Path) -> None:
    # A collection on Qdrant keeps its data in collections of a server (or in its folder,
    # through a client this process may hold open): both go with it.
    from .store import qdrant

    spec = qdrant.recorded(path)
    if spec is not None:
        qdrant.Collections(path, spec).drop()
        if not spec.get("url"):
            qdrant.forget_client(path)


def info(root: str | os.PathLike[str]) -> list[CollectionInfo]:
    """Every collection with its article and chunk counts (0 for an empty one)."""
    from .store import open_index, store_of

    out = []
    for name in names(root):
        path = folder(root, name)
        articles = chunks = 0
        try:
            on_qdrant = store_of(path) != "faiss"
            if on_qdrant:
                counts = open_index(path).manifest["counts"]
                articles, chunks = int(counts["articles"]), int(counts["chunks"])
        except RagError:
            on_qdrant = True  # unreadable: listed empty (`rag stats --collection` names why)
        if on_qdrant:
            out.append(CollectionInfo(name, str(path), articles, chunks))
            continue
        try:
            gen = (path / CURRENT).read_text(encoding="ascii").split()[0]
            counts = json.loads((path / gen / MANIFEST).read_text(encoding="utf-8"))["counts"]
            articles, chunks = int(counts["articles"]), int(counts["chunks"])
        except (OSError, ValueError, KeyError, IndexError):
            pass  # empty (or damaged: `rag list --collection` names the problem)
        out.append(CollectionInfo(name, str(path), articles, chunks))
    return out
