"""The keyword side of the index: SQLite FTS5's tokenizer and query, and BM25 over several
segments with the statistics of the whole index (what FTS5 computes over one table)."""

from __future__ import annotations

import math
import re
import sqlite3
import threading
from collections.abc import Sequence

# The keyword index's tokenizer: the lexical evidence of `rag.support` reads text through
# the same one (`terms`), so both count the same words.
TOKENIZER = "porter unicode61 remove_diacritics 2"


# Words too common to help a keyword match; the dense side still sees them.
STOPWORDS = frozenset(
    """a an and are as at be been but by can could did do does for from had has have he her his
    how i if in into is it its may me might my not of on or our she should so than that the their
    them then there these they this those to us was we were what when where which who whom whose
    why will with would you your""".split()
)
_WORD = re.compile(r"\w+", re.UNICODE)


def keyword_words(text: str) -> list[str]:
    """The distinct non-stopword words of `text` a keyword search looks for (at most 64)."""
    words: list[str] = []
    for w in _WORD.findall(text.lower()):
        if w not in STOPWORDS and w not in words:
            words.append(w)
    return words[:64]


def keyword_query(text: str) -> str:
    """An FTS5 OR-query of the distinct non-stopword words of `text` (quoted: no syntax)."""
    return " OR ".join(f'"{w}"' for w in keyword_words(text))


_tokenizer = threading.local()


def terms(texts: Sequence[str]) -> list[list[str]]:
    """Each text as the keyword index's terms, in order (lower case, stemmed, no diacritics):
    FTS5 itself tokenises them, in a private in-memory table, so a word counts here exactly
    when the keyword search would match it."""
    db = getattr(_tokenizer, "db", None)
    if db is None:
        db = _tokenizer.db = sqlite3.connect(":memory:")
        db.execute(f"CREATE VIRTUAL TABLE t USING fts5(text, tokenize = '{TOKENIZER}')")
        db.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, instance)")
    out: list[list[str]] = [[] for _ in texts]
    with db:
        db.executemany("INSERT INTO t(rowid, text) VALUES (?, ?)", enumerate(texts))
        for term, doc in db.execute("SELECT term, doc FROM v ORDER BY doc, offset"):
            out[doc].append(term)
        db.execute("DELETE FROM t")
    return out


STOP_TERMS = frozenset(t for ts in terms(sorted(STOPWORDS)) for t in ts)


# FTS5's bm25() constants (fts5_aux.c): what one segment's own ranking uses.
BM25_K1 = 1.2
BM25_B = 0.75


def bm25_idf(rows: int, hits: int) -> float:
    """FTS5's inverse document frequency of a phrase found in `hits` of `rows` rows."""
    idf = math.log((0.5 + rows - hits) / (0.5 + hits))
    return idf if idf > 0.0 else 1e-6


def occurrences(tokens: Sequence[str], phrase: Sequence[str]) -> int:
    """How often `phrase` (a word as the tokenizer splits it) occurs in `tokens`."""
    n = len(phrase)
    if n == 0:
        return 0
    if n == 1:
        return sum(1 for t in tokens if t == phrase[0])
    return sum(1 for i in range(len(tokens) - n + 1) if list(tokens[i : i + n]) == list(phrase))


def bm25(
    tokens: Sequence[str], phrases: Sequence[Sequence[str]], idf: Sequence[float], avgdl: float
) -> float:
    """The BM25 score FTS5 gives a row of these `tokens` for an OR-query of `phrases`, with
    the index-wide `idf` of each phrase and average row length `avgdl` (positive: higher is
    better, where FTS5's bm25() is its negative)."""
    score = 0.0
    norm = BM25_K1 * (1 - BM25_B + BM25_B * len(tokens) / avgdl) if avgdl > 0 else BM25_K1
    for phrase, weight in zip(phrases, idf, strict=True):
        f = occurrences(tokens, phrase)
        if f:
            score += weight * (f * (BM25_K1 + 1.0)) / (f + norm)
    return score
