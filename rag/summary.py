"""Whole-article tasks: recognising a request for a summary, and the parts of one.

"Summarize the article about X" answered like a question gets five passages, and a summary
of whatever they hold. A task instead reads the whole article (or the articles about a
subject), in sections of consecutive passages, each section's main fact one point (map); when
a long article or several make more points than a summary holds, the points are combined
into fewer (reduce). Given a whole article at once, the bundled 0.5B model summarised its
first half only (docs/evaluation.md). The model is not asked to cite: each point is tied
afterwards to the passage holding most of its rare words and all of its numbers, and a point
no passage holds is dropped, the way an answer no passage supports is withdrawn.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import prompt as P
from .chunking import split_sentences
from .store import STOP_TERMS, terms

# Points a summary holds at most: an article is read in this many sections (fewer when it
# has fewer passages), one point each; notes beyond it are combined into this many.
POINTS = 7
# A point is kept when one passage holds this share of its content words, weighted by
# rarity in the index, and every number it states.
HELD = 0.5
# Tokens the model may write for one section's point, and for a combined summary; what the
# instructions and chat template take beside the text.
POINT_TOKENS = 80
TOKENS = 320
OVERHEAD = 160
# Rounds of combining notes in groups before the last combination, at most (each round
# makes two points of a group: a few rounds fit any article).
ROUNDS = 4
# The `support` check of a summary none of whose points a passage holds.
NOT_HELD_CHECK = "no point held by the passages"
# Articles a summary of "my articles about X" reads, at most.
MAX_ARTICLES = 5

_NOUN = (
    r"(?:article|story|stories|piece|report|post|blog\s+post|page|document|text|item|source|coverage|news)s?"
)
_DET = r"(?:(?:all\s+(?:of\s+)?)?(?:the|this|that|these|those|my|our|your)\s+|all\s+)"
_SIZE = r"(?:(?:short|brief|quick|concise)\s+)?"
_THING = r"(?:summary|overview|gist|synopsis|rundown|recap|tl;?\s?dr)"
_VERB = (
    r"(?:summari[sz]e|sum\s+(?:it\s+|this\s+|that\s+|them\s+)?up|recap|tl;?\s?dr|"
    rf"(?:give|write|make|show|tell)\s+(?:me\s+|us\s+)?(?:a\s+|an\s+|the\s+)?{_SIZE}{_THING}|"
    rf"(?:a\s+|an\s+|the\s+)?{_SIZE}{_THING}|"
    r"(?:give\s+(?:me\s+|us\s+))?(?:what\s+are\s+)?(?:the\s+)?(?:main|key)\s+(?:points|facts|takeaways))"
)
# Words before a request that only make it polite or personal.
_LEAD = (
    r"(?:(?:please|can\s+you|could\s+you|would\s+you|i'?d\s+like|i\s+would\s+like|i\s+want|i\s+need|"
    r"(?:can|could|may)\s+i\s+(?:get|have|see)|let\s+me\s+(?:have|see))\s+)*"
)
_ASK = re.compile(rf"^{_LEAD}{_VERB}\b\W*(?P<rest>.*)$", re.I)
# "What does the article say about Y?", "What do my articles say about Z?", "How do the
# articles describe Z?"
_SAY = re.compile(
    rf"^(?:(?:everything|all)\s+(?:that\s+)?|what\s+(?:(?:does|do|did)\s+)?)(?P<obj>{_DET}?{_NOUN})\s+"
    r"(?:say|says|report|tell\s+(?:me|us))\s+(?:about|on|of|regarding)\s+(?P<rest>.+)$"
    rf"|^how\s+(?:do|does|did)\s+(?P<obj2>{_DET}?{_NOUN})\s+(?:describe|cover|report\s+on)\s+(?P<rest2>.+)$",
    re.I,
)
# "What is the article about?"
_ABOUT = re.compile(rf"^what(?:'s|\s+is|\s+are)\s+(?P<obj>{_DET}{_NOUN})\s+about\W*$", re.I)
_OBJECT = re.compile(
    rf"^(?:of\s+|on\s+|for\s+|from\s+|in\s+)?(?P<obj>{_DET}?{_NOUN})?\s*"
    r"(?:(?:about|on|of|regarding|concerning|covering)\s+)?(?P<rest>.*)$",
    re.I,
)
# How the summary should look, said after its subject ("in three bullet points").
_FORMAT = re.compile(
    r"\s+(?:in|as|with)\s+(?:\w+\s+)?(?:short\s+)?(?:bullet\s+points|bullets|points|sentences|words|lines|"
    r"paragraphs?)\b.*$|(?:^|\s+)for\s+(?:me|us)\b.*$",
    re.I,
)
# Comparisons of coverage: "how did outlets report X", "compare the articles about X",
# "where do the reports differ on X", "how was X reported".
_MEDIA = (
    r"(?:(?:different|various|other|the|these|those|all\s+(?:the\s+)?|my)\s+)*"
    r"(?:outlets|papers|newspapers|media|press|reporters|journalists|broadcasters|websites|sources|"
    r"news\s+(?:sites|outlets|organi[sz]ations|media))"
)
_ACCOUNTS = (
    r"(?:(?:the|these|those|my|our|both|all\s+(?:the\s+)?|selected|chosen|two|three|four|five)\s+)*"
    r"(?:coverage|reporting|reports|articles|stories|accounts|pieces|outlets|papers|newspapers|sources|media)"
)
_REPORTED = (
    r"(?:report(?:ed)?(?:\s+on)?|cover(?:ed)?|treat(?:ed)?|present(?:ed)?|portray(?:ed)?|describe[d]?)"
)
_DIFFER = r"(?:differ|disagree|agree|diverge|contradict\s+each\s+other)"
_COMPARE = (
    re.compile(rf"^how\s+(?:did|do|does|have|has)\s+{_MEDIA}\s+{_REPORTED}\s+(?P<rest>.+)$", re.I),
    re.compile(
        r"^how\s+(?:was|were|is|are|has\s+been|have\s+been)\s+(?P<rest>.+?)\s+(?:reported|covered|portrayed)"
        r"(?:\s+(?:by|in)\s+.+)?$",
        re.I,
    ),
    re.compile(
        rf"^(?:where|how|on\s+what|what|in\s+what\s+ways?)\s+(?:do|does|did)\s+{_ACCOUNTS}\s+"
        rf"(?:(?:of|on|about)\s+(?P<inner>.+?)\s+)?{_DIFFER}"
        rf"(?:\s+(?:and|or)\s+(?:where|how|what)?\s*(?:(?:do|does|did)\s+(?:they|it)\s+)?{_DIFFER})?"
        r"(?:\s+on)?(?:\s+(?:on|about|over|regarding|in\s+(?:their\s+)?(?:reporting|coverage)\s+of))?"
        r"(?P<rest>(?:\s+.*)?)$",
        re.I,
    ),
    re.compile(
        rf"^{_LEAD}compare\s+(?:how\s+{_MEDIA}\s+{_REPORTED}\s+|what\s+{_ACCOUNTS}\s+(?:say|said|report(?:ed)?)"
        rf"\s+(?:about|on|of|regarding)\s+|{_ACCOUNTS}(?:\s+(?:of|on|about|regarding|covering|from)\s+|\W*$))"
        r"(?P<rest>.*)$",
        re.I,
    ),
)
# A request of its own said after a question: "How do the articles describe it? Summarize."
_ALONE = re.compile(rf"^{_LEAD}{_VERB}(?:\s+(?:it|this|that|them))?(?:,?\s+please)?\W*$", re.I)
_DEICTIC = frozenset(("it", "this", "that", "them", "these", "those", "this one", "that one", "me", "us"))
_NUMBER = re.compile(r"^\d")
_POINT = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")


@dataclass(frozen=True)
class Task:
    """A request about whole articles: summarise the article (`several`: the articles)
    about `subject` ("" for the one in view), on `focus` alone when set; or, `compare`,
    compare the articles about it."""

    subject: str = ""
    several: bool = False
    focus: str = ""
    # Compare the articles' coverage (what they agree on, where they differ): `rag.compare`.
    compare: bool = False


def _several(obj: str) -> bool:
    words = obj.lower().split()
    if not words:
        return False
    noun = words[-1]
    return (
        (noun.endswith("s") and noun != "news")
        or noun in ("news", "coverage")
        or words[0] in ("all", "these", "those")
    )


def _subject(text: str) -> str:
    s = re.sub(r"\s+", " ", text).strip().strip("?.!:;,\"'“”‘’ ").strip()
    s = _FORMAT.sub("", s)
    s = re.sub(r",?\s*please$", "", s, flags=re.I).strip().strip("?.!:;,\"'“”‘’ ").strip()
    return "" if s.lower() in _DEICTIC else s


def _say(m: re.Match[str]) -> Task:
    obj, rest = (m["obj"], m["rest"]) if m["obj"] else (m["obj2"], m["rest2"])
    about = _subject(rest)
    return Task(about, _several(obj), about)


def recognise(question: str) -> Task | None:
    """The whole-article task `question` asks for, or None for a question to answer."""
    q = question.strip()
    sentences = [x.strip() for x in re.split(r"(?<=[?.!])\s+", q) if x.strip()]
    if len(sentences) > 1 and any(_ALONE.match(x) for x in sentences):
        # "How do the articles describe the drought? Summarize.": the other sentence says what.
        said = " ".join(x for x in sentences if not _ALONE.match(x))
        return recognise(said) or Task(subject=_subject(said))
    for pattern in _COMPARE:
        m = pattern.match(q.rstrip("?.! "))
        if m:
            said = (m.groupdict().get("inner") or "") or m["rest"]
            return Task(_subject(said), several=True, compare=True)
    m = _SAY.match(q)
    if m:
        return _say(m)
    m = _ABOUT.match(q)
    if m:
        return Task("", _several(m["obj"]))
    m = _ASK.match(q)
    if not m:
        return None
    rest = m["rest"].strip()
    inner = _SAY.match(rest)
    if inner:
        return _say(inner)
    o = _OBJECT.match(rest)
    assert o is not None  # every part of it is optional
    return Task(_subject(o["rest"]), _several(o["obj"] or ""))


def parts(
    bounds: Sequence[tuple[int, int]], text: str, count_tokens: Callable[[str], int], budget: int
) -> list[str]:
    """`text` cut at chunk boundaries (`bounds`: each chunk's start and end, in order) into
    the fewest runs of consecutive chunks that fit `budget` tokens; a run's text goes from
    its first chunk's start to its last one's end, so overlapping chunks are read once."""
    runs: list[str] = []
    i = 0
    while i < len(bounds):
        j = i + 1
        while j < len(bounds) and count_tokens(text[bounds[i][0] : bounds[j][1]]) <= budget:
            j += 1
        runs.append(text[bounds[i][0] : bounds[j - 1][1]])
        i = j
    return runs


def sections(
    bounds: Sequence[tuple[int, int]], text: str, count_tokens: Callable[[str], int], budget: int, n: int
) -> list[str]:
    """`text` in `n` sections of about as many consecutive chunks each (fewer when there are
    fewer chunks), a section too long for `budget` tokens cut further (`parts`); each chunk's
    text is read from its start to the next one's, so that overlaps are read once."""
    if not bounds:
        return []
    cuts = [b[0] for b in bounds] + [bounds[-1][1]]
    spans = [(cuts[i], max(cuts[i + 1], cuts[i])) for i in range(len(bounds))]
    n = max(1, min(n, len(spans)))
    edges = [round(i * len(spans) / n) for i in range(n + 1)]
    out: list[str] = []
    for a, b in itertools.pairwise(edges):
        out += [r for r in parts(spans[a:b], text, count_tokens, budget) if r.strip()]
    return out


def batches(notes: Sequence[str], count_tokens: Callable[[str], int], budget: int) -> list[list[str]]:
    """`notes` in order, grouped so that each group's joined text fits `budget` tokens."""
    out: list[list[str]] = []
    size = 0
    for n in notes:
        t = count_tokens(n) + 1
        if out and size + t <= budget:
            out[-1].append(n)
            size += t
        else:
            out.append([n])
            size = t
    return out


def progress_text(done: int, steps: int) -> str:
    """What a summary read in sections is doing, for a status line."""
    return f"Summarizing: {done} of {steps} sections read"


SYSTEM = "You summarize news articles faithfully."


def point_messages(text: str, focus: str = "") -> list[dict[str, str]]:
    """Messages asking for the main fact of one section of an article (on `focus`, if set).
    Without the title: given it, the 0.5B model wrote about the title in every section."""
    what = f"what this text says about {P.sanitize(focus)}" if focus else "the main fact of this text"
    return [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": f"Text:\n{P.sanitize(text)}\n\nState {what} in one short sentence, "
            "with its names and numbers as the text gives them.",
        },
    ]


def reduce_messages(notes: Sequence[str], focus: str = "", *, points: int = POINTS) -> list[dict[str, str]]:
    """Messages asking for the points of sections (or articles) combined into fewer."""
    body = "\n".join(f"- {P.sanitize(n)}" for n in notes)
    about = f" Keep to what they say about {P.sanitize(focus)}." if focus else ""
    return [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": f"Notes:\n{body}\n\nCombine these notes into at most {points} short bullet points, "
            f'one per line, each starting with "- ", keeping their names and numbers. Use only the notes; '
            f"no introduction, no conclusion.{about}",
        },
    ]


def about(text: str, focus: str) -> bool:
    """Whether `text` holds one of `focus`'s content words."""
    wanted = {t for t in terms([focus])[0] if t not in STOP_TERMS}
    return bool(wanted & set(terms([text])[0]))


def first_sentence(reply: str) -> str:
    """A section's point from the model's reply: its first sentence (asked for one, the small
    model may go on, and be cut off mid-sentence by the token limit)."""
    line = next((x for x in reply.strip().splitlines() if x.strip()), "")
    spans = split_sentences(line)
    return line[spans[0][0] : spans[0][1]] if spans else line.strip()


def point_of(line: str) -> str:
    """The text of one bullet line of the model's output ("" for a line that is none)."""
    s = _POINT.sub("", line.strip()).strip()
    s = re.sub(r"\s*\[\d+(?:\s*[,;]\s*\d+)*\]", "", s).strip()
    s = s.replace("**", "")
    # A heading the model adds ("Summary:", "Key points:") states nothing.
    if not s or s.endswith(":") or len(terms([s])[0]) < 3:
        return ""
    return s


def held(
    point: str, passages: Sequence[str], rarity: Callable[[Sequence[str]], dict[str, float]]
) -> tuple[int, float]:
    """The index in `passages` of the one holding most of `point` (its content words weighted
    by rarity, every number required) and the share it holds; (-1, 0.0) when none holds any."""
    words = [t for t in dict.fromkeys(terms([point])[0]) if t not in STOP_TERMS]
    if not words:
        return -1, 0.0
    weight = rarity(words)
    total = sum(weight.get(w, 1.0) for w in words) or 1.0
    numbers = [w for w in words if _NUMBER.match(w)]
    best, share = -1, 0.0
    for i, text in enumerate(passages):
        have = set(terms([text])[0])
        if any(n not in have for n in numbers):
            continue
        s = sum(weight.get(w, 1.0) for w in words if w in have) / total
        if s > share:
            best, share = i, s
    return best, share
