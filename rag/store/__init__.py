"""The index folder: write-once segments of FAISS vectors + SQLite chunks, listed by
generations that are committed atomically.

A commit writes what changed only: a new segment holding the articles it adds (their text,
chunks, keyword index and vectors) and a new manifest listing the segments the generation
serves, with the articles each no longer serves (removed or replaced); then one atomic
rename of CURRENT makes it live. A crash at any moment leaves CURRENT pointing at a
complete, checksummed generation. Search runs over every segment and merges the results:
vectors by inner product (exact in small segments, IVF in large ones), keywords by BM25 with
the whole index's statistics. Small segments are folded together as they accumulate, and
`rag compact` folds the rest, under the same atomic switch (`files.py` has the layout).
"""

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
from .segment import ChunkRow, Segment, article_hash
from .snapshot import AGREEMENT, Snapshot
from .text import STOP_TERMS, STOPWORDS, TOKENIZER, keyword_query, keyword_words, terms
from .transaction import Transaction, compact, wants_compaction

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
    "TOKENIZER",
    "VECTORS",
    "ChunkRow",
    "Segment",
    "Snapshot",
    "Transaction",
    "all_vectors",
    "ann_nlist",
    "article_hash",
    "build_ann",
    "compact",
    "flat_index",
    "keyword_query",
    "keyword_words",
    "list_generations",
    "read_pointer",
    "recover",
    "terms",
    "vector_index",
    "verify_generation",
    "wants_compaction",
    "writer_lock",
]
