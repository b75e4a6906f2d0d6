"""The index folder: write-once segments of FAISS vectors + SQLite chunks, listed by
generations that are committed atomically.

A commit writes what changed only: a new segment holding the articles it adds (their text,
chunks, keyword index and vectors) and a new manifest listing the segments the generation
serves, with the articles each no longer serves (removed or replaced); then one atomic
rename of CURRENT makes it live. A crash at any moment leaves CURRENT pointing at a
complete, checksummed generation. Search runs over every segment and merges the results:
vectors by inner product (exact in small segments, IVF in large ones), keywords by BM25 with
the whole index's statistics. Small segments are folded together as they accumulate, large
ones by size tier as large commits add them, and `rag compact` folds the rest, under the same
atomic switch (`files.py` has the layout).
"""

import os
from pathlib import Path
from typing import Any

from .ann import ANN_TARGET_RECALL, FLAT, IVF, all_vectors, ann_nlist, build_ann, flat_index, vector_index
from .files import (
    CHUNKS,
    CURRENT,
    FORMAT_VERSION,
    MANIFEST,
    VECTORS,
    list_generations,
    read_pointer,
    recover,
    verify_generation,
    writer_lock,
)
from .migrate import migrate
from .segment import ChunkRow, Segment, article_hash
from .snapshot import AGREEMENT, Snapshot
from .text import STOP_TERMS, STOPWORDS, TOKENIZER, keyword_query, keyword_words, terms
from .transaction import Transaction, compact, wants_compaction

STORES = ("faiss", "qdrant")


def store_of(root: Path) -> str:
    """Which store holds the index at `root`: as its `STORE` file records, else FAISS."""
    from . import qdrant

    return "qdrant" if qdrant.recorded(root) is not None else "faiss"


def open_index(root: str | os.PathLike[str], *, verify: bool = True, previous: Any = None) -> Any:
    """The live generation of the index at `root`, in whichever store holds it."""
    from . import qdrant

    root = Path(root)
    spec = qdrant.recorded(root)
    if spec is not None:
        return qdrant.QdrantSnapshot(root, spec)
    return Snapshot.open(root, verify=verify, previous=previous if isinstance(previous, Snapshot) else None)


def pointer(root: str | os.PathLike[str]) -> str:
    """What changes when a commit lands on the index at `root` ("" while there is none)."""
    from . import qdrant

    root = Path(root)
    if qdrant.recorded(root) is not None:
        return qdrant.pointer(root)
    try:
        return (root / CURRENT).read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return ""


def begin(root: str | os.PathLike[str], *, store: str = "", qdrant_url: str = "", **kwargs: Any) -> Any:
    """A transaction on the index at `root`. Its store is the one the index records; a new
    index goes to `store` (default FAISS); naming another store than an index's is an error."""
    from ..errors import ConfigError
    from . import qdrant

    root = Path(root)
    spec = qdrant.recorded(root)
    has_faiss = (root / CURRENT).exists() or any(root.glob("gen-*"))
    chosen = "qdrant" if spec is not None else "faiss" if has_faiss else (store or "faiss")
    if store and store != chosen:
        raise ConfigError(
            f"{root} holds an index on the {chosen} store, not {store}; "
            f"move it with `rag migrate --to {store} --index {root}`, or leave out --store"
        )
    if chosen == "qdrant":
        kwargs.pop("ann_threshold", None)
        return qdrant.QdrantTransaction(root, url=(spec or {}).get("url") or qdrant_url, **kwargs)
    return Transaction(root, **kwargs)


__all__ = [
    "AGREEMENT",
    "ANN_TARGET_RECALL",
    "CHUNKS",
    "CURRENT",
    "FLAT",
    "FORMAT_VERSION",
    "IVF",
    "MANIFEST",
    "STOPWORDS",
    "STOP_TERMS",
    "STORES",
    "TOKENIZER",
    "VECTORS",
    "ChunkRow",
    "Segment",
    "Snapshot",
    "Transaction",
    "all_vectors",
    "ann_nlist",
    "article_hash",
    "begin",
    "build_ann",
    "compact",
    "flat_index",
    "keyword_query",
    "keyword_words",
    "list_generations",
    "migrate",
    "open_index",
    "pointer",
    "read_pointer",
    "recover",
    "store_of",
    "terms",
    "vector_index",
    "verify_generation",
    "wants_compaction",
    "writer_lock",
]
