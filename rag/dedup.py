"""Syndicated copies: articles whose text is a near-duplicate of one already indexed.

Each article's text is reduced to a MinHash signature over word shingles (datasketch); an
LSH index over the indexed articles' signatures finds candidates, and a candidate counts as
the same story when the estimated Jaccard similarity of the shingle sets reaches the
threshold. The same wire report reprinted by several outlets, with a different headline,
byline or a trimmed paragraph, stays well above it; two reports of the same event written
apart share few 5-word shingles and stay far below (measured in the README). A missed copy
costs a repeated passage, a wrong merge hides an article: texts too short to judge are
never merged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

NUM_PERM = 128
# Named, not left to datasketch's default: signatures are stored in the index and must stay
# comparable across upgrades.
SCHEME = "affine32"
SHINGLE = 5
THRESHOLD = 0.5
# Texts with fewer words than this are never merged: a few shared shingles would decide, and
# short templated lines with different facts ("Release date. May 29, 2020 ; Genre ...") reach
# 0.5 (measured on rgb-news: every pair at or above 0.3 among longer passages is one report).
MIN_WORDS = 20
_WORD = re.compile(r"\w+", re.UNICODE)


def signature(text: str) -> np.ndarray | None:
    """The MinHash signature of a text (uint64, NUM_PERM long), or None when it is too short."""
    from datasketch import MinHash

    words = _WORD.findall(text.lower())
    if len(words) < MIN_WORDS:
        return None
    m = MinHash(num_perm=NUM_PERM, seed=1, scheme=SCHEME)
    m.update_batch(" ".join(words[i : i + SHINGLE]).encode() for i in range(len(words) - SHINGLE + 1))
    return m.hashvalues.astype(np.uint64)


# The index keeps each signature's LSH band keys (datasketch's banding, kept in SQLite
# instead of in memory, so a new article meets its candidates without reading every
# signature): 37 bands of 3 rows, datasketch's own choice for the lowest threshold one would
# set (0.3), which finds a pair of Jaccard 0.5 with probability 0.993 and an unrelated pair
# (0.05) with 0.005; every candidate is then checked against the threshold.
BANDS = 37
ROWS = 3


def band_keys(sig: np.ndarray) -> list[str]:
    """The LSH band keys of a signature: two signatures share one when a band agrees."""
    raw = sig[: BANDS * ROWS].astype("<u8").tobytes().hex()
    step = ROWS * 16  # hex digits of one band
    return [f"{b:02d}{raw[b * step : (b + 1) * step]}" for b in range(BANDS)]


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Estimated Jaccard similarity of two signatures."""
    return float(np.mean(a == b))


class Copies:
    """An LSH index of signatures: which indexed article, if any, a new text copies."""

    def __init__(self, threshold: float = THRESHOLD) -> None:
        from datasketch import MinHashLSH

        self.threshold = threshold
        self._lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
        self._sigs: dict[str, np.ndarray] = {}

    def add(self, article_id: str, sig: np.ndarray) -> None:
        from datasketch import LeanMinHash

        if article_id in self._sigs:
            self.discard(article_id)
        self._sigs[article_id] = sig
        self._lsh.insert(article_id, LeanMinHash(seed=1, hashvalues=sig, scheme=SCHEME))

    def discard(self, article_id: str) -> None:
        if self._sigs.pop(article_id, None) is not None:
            self._lsh.remove(article_id)

    def original(self, sig: np.ndarray, *, exclude: Iterable[str] = ()) -> tuple[str, float] | None:
        """The most similar indexed article at or above the threshold, with its similarity."""
        from datasketch import LeanMinHash

        skip = set(exclude)
        best: tuple[str, float] | None = None
        for aid in self._lsh.query(LeanMinHash(seed=1, hashvalues=sig, scheme=SCHEME)):
            if aid in skip:
                continue
            s = similarity(sig, self._sigs[aid])
            if s >= self.threshold and (best is None or s > best[1] or (s == best[1] and aid < best[0])):
                best = (aid, s)
        return best
