"""Articles to sentence-aligned chunks measured in the embedder's own tokens.

Every chunk keeps its character offsets: `text[chunk.start:chunk.end] == chunk.text`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from .types import Chunk

TokenOffsets = Callable[[str], Sequence[tuple[int, int]]]

# A sentence ends at . ! ? (plus closing quotes/brackets) before whitespace, or at a line break.
_BOUNDARY = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+|\n\s*")
# "U.S. officials", "Mr. Putin", "e.g. this": a period after these is no sentence end.
_ABBREV = re.compile(
    r"(?:\b(?:[A-Z]\.){1,3}|\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|Gen|Gov|Sen|Rep|Lt|Col|Sgt|Capt|"
    r"Inc|Ltd|Co|Corp|vs|etc|e\.g|i\.e|No|Vol|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\.)$"
)


def split_sentences(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Character spans of the sentences of `text[start:end]`, whitespace excluded."""
    end = len(text) if end is None else end
    spans: list[tuple[int, int]] = []
    pos = start
    for m in _BOUNDARY.finditer(text, start, end):
        cut = m.start()
        if m.group().strip(" \t") == "" and "\n" not in m.group():
            # Whitespace after . ! ?: skip when the next word starts lowercase or the dot ends
            # an abbreviation.
            nxt = text[m.end() : m.end() + 1]
            head = text[max(pos, cut - 12) : cut]
            if (nxt and nxt.islower()) or _ABBREV.search(head):
                continue
        if cut > pos:
            spans.append((pos, cut))
        pos = m.end()
    if pos < end:
        spans.append((pos, end))
    return [(s, e) for s, e in (_strip(text, s, e) for s, e in spans) if e > s]


def _strip(text: str, s: int, e: int) -> tuple[int, int]:
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, e


def chunk_text(
    article_id: str,
    text: str,
    token_offsets: TokenOffsets,
    *,
    max_tokens: int,
    overlap: int,
) -> list[Chunk]:
    """Greedy sentence packing up to `max_tokens`, repeating up to `overlap` tokens of
    trailing sentences at the start of the next chunk. A sentence longer than
    `max_tokens` is cut at token boundaries."""
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    overlap = min(overlap, max_tokens // 2)
    tokens = list(token_offsets(text))
    starts = [s for s, _ in tokens]
    units = _units(text, tokens, starts, max_tokens)

    chunks: list[tuple[int, int]] = []
    i = 0
    while i < len(units):
        j, total = i, 0
        while j < len(units) and (j == i or total + units[j][2] <= max_tokens):
            total += units[j][2]
            j += 1
        chunks.append((units[i][0], units[j - 1][1]))
        if j >= len(units):
            break
        # Step back over trailing units that fit in the overlap, but always advance.
        k, back = j, 0
        while k - 1 > i and back + units[k - 1][2] <= overlap:
            back += units[k - 1][2]
            k -= 1
        i = k
    return [
        Chunk(article_id=article_id, ordinal=n, start=s, end=e, text=text[s:e])
        for n, (s, e) in enumerate(chunks)
    ]


def _units(
    text: str, tokens: list[tuple[int, int]], starts: list[int], max_tokens: int
) -> list[tuple[int, int, int]]:
    """Sentences as (start, end, n_tokens), overlong ones cut into token windows."""
    import bisect

    units: list[tuple[int, int, int]] = []
    for s, e in split_sentences(text):
        lo = bisect.bisect_left(starts, s)
        hi = bisect.bisect_left(starts, e)
        n = hi - lo
        if n <= max_tokens:
            if n > 0 or text[s:e].strip():
                units.append((s, e, max(n, 1)))
            continue
        for w in range(lo, hi, max_tokens):
            w_end = min(w + max_tokens, hi)
            cs = s if w == lo else tokens[w][0]
            ce = e if w_end == hi else tokens[w_end][0]
            cs, ce = _strip(text, cs, ce)
            if ce > cs:
                units.append((cs, ce, w_end - w))
    return units


def evidence_runs(text: str, evidence: Sequence[str], neighbours: int = 1) -> list[tuple[int, int]]:
    """Character spans of `text` around its `evidence` sentences: each with `neighbours`
    sentences on either side, in text order, touching ones merged. Empty when no evidence
    sentence is one of its sentences."""
    spans = split_sentences(text)
    wanted = set(evidence)
    hit = [i for i, (s, e) in enumerate(spans) if text[s:e] in wanted]
    keep = sorted({j for i in hit for j in range(i - neighbours, i + neighbours + 1) if 0 <= j < len(spans)})
    runs: list[tuple[int, int]] = []
    last = -2
    for j in keep:
        if runs and j == last + 1:
            runs[-1] = (runs[-1][0], spans[j][1])
        else:
            runs.append(spans[j])
        last = j
    return runs
