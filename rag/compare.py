"""Comparing how articles report the same thing: what they agree on, where they differ.

Composed from the articles' own sentences, not generated: each point quotes or cites the
sentences it rests on. Sentences of different articles that say the same thing (their
vectors close) are one claim; a claim whose sentences state different figures or different
names, each absent from the other article altogether, is a difference; one whose sentences
agree is an agreement; a fact only one article states is listed as its own. Given the
articles and asked where they agree and differ, the bundled 0.5B model called contradicting
reports agreements and gave no differing figure (docs/evaluation.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .chunking import split_sentences
from .store import STOP_TERMS, terms

# Two sentences of different articles are the same claim at this cosine or above; at
# PAIRED or above, when they state figures of the same kind (their unit word), their
# figures are compared.
SAME = 0.62
PAIRED = 0.45
# A sentence of an article chosen for the subject is weighed when its cosine with the
# subject reaches this (the articles are about it: only what is plainly elsewhere is left).
RELEVANT = 0.1
# Two sentences say the same of different names or figures when this share of the shorter
# one's other content words are the other's too.
SLOT = 0.5
# Names differ only between close sentences that say the same of them beyond this share:
# a name one article adds is far more often a detail than a contradiction.
NAMES = 0.7
# Sentences of an article weighed, at most (the most relevant); points shown, at most.
CLAIMS = 12
POINTS = 9
ONLY_EACH = 2
# Names an agreement lists that one article adds, at most per article.
ALSO = 3
# Articles a comparison reads: fewer than two is no comparison.
MIN_ARTICLES = 2

_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
} | {w: 10 * (i + 3) for i, w in enumerate("thirty forty fifty sixty seventy eighty ninety".split())}
_SCALE = {
    "hundred": 1e2,
    "thousand": 1e3,
    "k": 1e3,
    "million": 1e6,
    "m": 1e6,
    "mn": 1e6,
    "billion": 1e9,
    "bn": 1e9,
    "b": 1e9,
    "trillion": 1e12,
    "tn": 1e12,
}
_MONEY = {"$": "money", "us$": "money", "€": "money", "£": "money", "dollars": "money", "euros": "money"}
_MONEY |= {"pounds": "money", "dollar": "money", "euro": "money", "pound": "money", "usd": "money"}
_NUMBER_WORD = "|".join(sorted(_WORDS, key=len, reverse=True))
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|"
    r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
# A date ("Feb 19, 2014", "7 February 2021"): a search result's stamp more often than a
# reported fact, and its day is no figure to compare.
_DATE = re.compile(
    rf"\b(?:{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?|\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}(?:\s+\d{{4}})?)\b",
    re.I,
)
# A capitalised word inside a sentence right before a number: the number is part of a name.
_NAMED = re.compile(r"[^.!?;:\s]\s+[A-Z][\w.]*\s*$")
_CLOCK = re.compile(r"\b\d{1,2}[:.]\d{2}\b(?:\s?[ap]\.?m\.?)?", re.I)
_FIGURE = re.compile(
    r"(?P<cur>US\$|\$|€|£)?\s?"
    rf"(?P<num>\d+(?:[.,]\d+)*(?:\s?[-–]\s?\d+(?![.,]\d))?|(?:{_NUMBER_WORD})(?:-(?:{_NUMBER_WORD}))?)(?:\b|(?=(?:bn|mn|tn|[kmb])\b))"
    r"(?:\s?(?P<scale>hundred|thousand|million|billion|trillion|bn|mn|tn|[kmb])\b)?"
    r"(?:\s?(?P<pct>%)|(?:\s+|-)(?P<unit>per\s?cent|percent|[A-Za-z]+))?",
    re.I,
)
_CALENDAR = frozenset(
    "monday tuesday wednesday thursday friday saturday sunday january february march april may june july "
    "august september october november december".split()
)
_CALENDAR_TERMS = frozenset(t for w in _CALENDAR for t in terms([w])[0]) | {
    "jan",
    "feb",
    "sep",
    "oct",
    "nov",
    "dec",
}
_NAME = re.compile(r"\b[A-Z][\w'’.-]*(?:\s+(?:[A-Z][\w'’.-]*|of|de|van|von|al|bin|la|le)(?=\s+[A-Z]|\b))*")
_NEGATION = re.compile(r"\b(?:not|no|never|none|nobody|denied|denies|deny|without|n't)\b", re.I)


@dataclass(frozen=True)
class Claim:
    """One sentence of a compared article: `article` its place among them, `passage` the
    number of the passage it is in."""

    article: int
    passage: int
    text: str


@dataclass(frozen=True)
class Figure:
    """A number as a sentence states it: its value (scaled: "$19bn" is 1.9e10), its kind
    (`money`, `%`, a year, or the word after it), and its words ("$19bn")."""

    value: str
    kind: str
    said: str


@dataclass(frozen=True)
class Point:
    """A point of a comparison: `agree` (the claims say the same), `differ` (their figures,
    names or claims differ; `said` holds what each claim states), or `only` (one article
    states it)."""

    kind: str
    claims: tuple[Claim, ...]
    said: tuple[str, ...] = ()
    what: str = ""


@dataclass(frozen=True)
class Comparison:
    """The points of a comparison, and the articles (by place) with a sentence that matched
    one of another article: the others report nothing the rest do."""

    points: tuple[Point, ...]
    matched: frozenset[int]


def _value(num: str, scale: str | None) -> float | str:
    n = re.sub(r"\s*[-–]\s*", "-", num.lower().replace(",", ""))
    if re.fullmatch(r"\d+-\d+", n):
        return n  # a score or a range ("2-1", "6–4"): compared as written
    if "-" in n:
        a, b = n.split("-", 1)
        v: float = _WORDS[a] + _WORDS[b]
    elif n in _WORDS:
        v = _WORDS[n]
    else:
        v = float(n)
    return v * _SCALE.get((scale or "").lower(), 1.0)


def figures(sentence: str) -> list[Figure]:
    """The numbers `sentence` states, each with its value and kind."""
    out: list[Figure] = []
    dates = [m.span() for pattern in (_DATE, _CLOCK) for m in pattern.finditer(sentence)]
    for m in _FIGURE.finditer(sentence):
        if any(a <= m.start("num") < b for a, b in dates):
            continue
        if not m["cur"] and _NAMED.search(sentence[: m.start()]):
            continue  # part of a name: "Pixel 6", "No. 1", "Boeing 737"
        num = m["num"]
        if num.lower() in ("one", "zero") and not (m["cur"] or m["scale"]):
            continue  # "one of the", "no one": rarely a figure
        value = _value(num, m["scale"])
        unit = (m["unit"] or "").lower()
        cur = (m["cur"] or "").lower()
        if cur or unit in _MONEY:
            kind = "money"
        elif m["pct"] or unit.replace(" ", "") == "percent":
            kind = "%"
        elif isinstance(value, str):
            kind = "score"
        elif 1800 <= value <= 2100 and re.fullmatch(r"\d{4}", num):
            kind = "year"
        elif unit and unit not in STOP_TERMS:
            kind = terms([unit])[0][0] if terms([unit])[0] else unit
            kind = "" if kind in _CALENDAR_TERMS else kind
        else:
            kind = ""
        # Shown as the article writes it, with its unit only when that says what it counts in.
        counted = m["unit"] and (m["unit"].lower() in _MONEY or kind == "%")
        end = (
            m.end("unit")
            if counted
            else m.end("pct")
            if m["pct"]
            else m.end("scale")
            if m["scale"]
            else m.end("num")
        )
        said = sentence[m.start() : end].strip()
        shown = f"{value:g}" if isinstance(value, float) else value
        out.append(Figure(shown, kind, said))
    return out


def names(sentence: str) -> set[str]:
    """The names in `sentence` (runs of capitalised words), the first word of the sentence
    left out unless the run goes on: "The" and "Investigators" start sentences, "Dana Wu"
    starts a name."""
    out = set()
    for m in _NAME.finditer(sentence):
        run = m.group(0)
        if m.start() == len(sentence) - len(sentence.lstrip()) and " " not in run:
            continue
        words = [w.rstrip(".'’-") for w in run.split() if w.lower() not in STOP_TERMS and w[0].isupper()]
        if words and not (len(words) == 1 and words[0].lower() in STOP_TERMS):
            out.add(" ".join(words))
    return out


def claims(articles: Sequence[Sequence[tuple[int, str]]]) -> list[Claim]:
    """Every sentence of each article's passages (`(passage number, text)`, in article
    order), each once: passages overlap."""
    out: list[Claim] = []
    for a, passages in enumerate(articles):
        seen: set[str] = set()
        for n, text in passages:
            for s, e in split_sentences(text):
                sentence = text[s:e].strip()
                key = " ".join(terms([sentence])[0])
                words = [t for t in terms([sentence])[0] if t not in STOP_TERMS and not t[0].isdigit()]
                # Too short to state a claim: a dateline, a heading, a search result's stamp.
                if len(words) < 3 or key in seen:
                    continue
                seen.add(key)
                out.append(Claim(a, n, sentence))
    return out


def _held(name: str, text: str) -> bool:
    """Whether `text` names `name`, or any of its words ("Berg" for "Tomas Berg")."""
    lowered = text.lower()
    return any(re.search(rf"\b{re.escape(w.lower())}\b", lowered) for w in name.split() if len(w) > 2)


class _Facts:
    """The figures and names of the compared sentences and articles, and which of a
    sentence's are missing from another article altogether."""

    def __init__(self, found: Sequence[Claim], texts: Sequence[str]) -> None:
        self.texts = texts
        self.values = [{f.value for f in figures(t)} for t in texts]
        self.figures = {c: [f for f in figures(c.text) if f.kind != "year"] for c in found}
        self.names = {c: [n for n in sorted(names(c.text)) if n.lower() not in _CALENDAR] for c in found}

    def new_figures(self, c: Claim, article: int) -> list[Figure]:
        return [f for f in self.figures[c] if f.value not in self.values[article]]

    def new_names(self, c: Claim, article: int) -> list[str]:
        return [n for n in self.names[c] if not _held(n, self.texts[article])]

    def kinds(self, c: Claim) -> set[str]:
        return {f.kind for f in self.figures[c] if f.kind}


def _rest(c: Claim, facts: _Facts) -> set[str]:
    """The content words of a sentence beside its names and figures: what it says of them."""
    named = {t for n in facts.names[c] for t in terms([n])[0]}
    return {t for t in terms([c.text])[0] if t not in STOP_TERMS and t not in named and not t[0].isdigit()}


def _alike(p: Claim, q: Claim, facts: _Facts, share: float = 0.0) -> bool:
    """Whether two sentences say the same of what they name: most (SLOT, or `share`) of the
    shorter one's content words, names and figures aside, are the other's too."""
    a, b = _rest(p, facts), _rest(q, facts)
    return min(len(a), len(b)) >= 3 and len(a & b) >= (share or SLOT) * min(len(a), len(b))


def _beside(name: str, text: str) -> set[tuple[str, str]]:
    """The words before and after `name` in `text`: where it stands in the sentence."""
    out = set()
    for m in re.finditer(re.escape(name), text):
        before = re.findall(r"[\w'’-]+", text[: m.start()].lower())
        after = re.findall(r"[\w'’-]+", text[m.end() :].lower())
        if before:
            out.add(("before", before[-1]))
        if after:
            out.add(("after", after[0]))
    return out


def _same_place(mine: Sequence[str], p: Claim, theirs: Sequence[str], q: Claim) -> list[tuple[str, str]]:
    """Names of two sentences that stand where the other's does ("named Priya Nair as",
    "named Tom Adler as"): a name in another place is a detail one article adds."""
    return [(n, m) for n in mine for m in theirs if _beside(n, p.text) & _beside(m, q.text)]


# Kinds of figure compared only with figures of their own kind.
_TYPED = frozenset(("money", "%", "score"))


def _clash(f: Figure, g: Figure, alike: bool) -> bool:
    """Whether two figures of sentences in different articles report the same quantity:
    of one kind, or (untyped) in sentences that say the same of them."""
    if f.kind in _TYPED or g.kind in _TYPED:
        return f.kind == g.kind
    return (bool(f.kind) and f.kind == g.kind) or alike


def _differences(
    members: Sequence[Claim], facts: _Facts, close: dict[tuple[Claim, Claim], float]
) -> tuple[str, dict[Claim, list[str]]] | None:
    """What sentences of one claim, in different articles, state differently, each absent
    from the other's article altogether: their figures of one quantity ("figures"), else,
    for sentences that say the same (`_alike` beyond NAMES) of different names in the same
    place, the names ("names"), else a claim one of them denies ("claims"). With, for each
    sentence that differs, what it states."""
    pairs = [(p, q) for p in members for q in members if p.article < q.article]
    found: dict[Claim, list[str]] = {}
    for p, q in pairs:
        mine, theirs = facts.new_figures(p, q.article), facts.new_figures(q, p.article)
        alike = _alike(p, q, facts)
        hits = [(f, g) for f in mine for g in theirs if _clash(f, g, alike)]
        for f, g in hits:
            found.setdefault(p, []).append(f.said)
            found.setdefault(q, []).append(g.said)
    if found:
        return "figures", found
    for p, q in pairs:
        if close[(p, q)] < PAIRED or not _alike(p, q, facts, NAMES):
            continue
        for n, m in _same_place(facts.new_names(p, q.article), p, facts.new_names(q, p.article), q):
            found.setdefault(p, []).append(n)
            found.setdefault(q, []).append(m)
    if found:
        return "names", found
    for p, q in pairs:
        if bool(_NEGATION.search(p.text)) != bool(_NEGATION.search(q.text)) and _alike(p, q, facts):
            found[p], found[q] = [p.text], [q.text]
    return ("claims", found) if found else None


def _bold(text: str, spans: Sequence[str]) -> str:
    for s in sorted(set(spans), key=len, reverse=True):
        text = re.sub(rf"(?<!\*){re.escape(s)}(?!\*)", f"**{s}**", text, count=1)
    return text


def _groups(found: Sequence[Claim], keep: Sequence[int], sims: np.ndarray, facts: _Facts) -> list[list[int]]:
    """Sentences of different articles that report one thing: each sentence's closest one in
    another article when each is the other's closest and they are close (SAME, or PAIRED
    with the same words beside their names); or, stating figures of one kind
    ("firefighters", money), the closest such pair of the two articles (PAIRED). Joined
    where they share a sentence."""
    n = len(keep)
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    arts = sorted({found[i].article for i in keep})
    of = {a: [x for x in range(n) if found[keep[x]].article == a] for a in arts}
    linked = [False] * n
    for a in arts:
        for b in arts:
            if b <= a:
                continue
            block = sims[np.ix_(of[a], of[b])]
            for ia, x in enumerate(of[a]):
                jb = int(block[ia].argmax())
                y = of[b][jb]
                if int(block[:, jb].argmax()) != ia:
                    continue
                # Close, or saying the same words of other names ("named Priya Nair chief
                # executive", "named Tom Adler ..."): names weigh much in a sentence's vector.
                if block[ia, jb] >= SAME or (
                    block[ia, jb] >= PAIRED and _alike(found[keep[x]], found[keep[y]], facts, NAMES)
                ):
                    parent[root(x)] = root(y)
                    linked[x] = linked[y] = True
            kinds = {k for x in of[a] for k in facts.kinds(found[keep[x]])}
            for k in sorted(kinds):
                pairs = [
                    (sims[x, y], x, y)
                    for x in of[a]
                    if k in facts.kinds(found[keep[x]])
                    for y in of[b]
                    if k in facts.kinds(found[keep[y]])
                ]
                if pairs:
                    sim, x, y = max(pairs)
                    if sim >= PAIRED:
                        parent[root(x)] = root(y)
                        linked[x] = linked[y] = True
    groups: dict[int, list[int]] = {}
    for x in range(n):
        if linked[x]:
            groups.setdefault(root(x), []).append(x)
    return [g for g in groups.values() if len({found[keep[x]].article for x in g}) > 1]


def _agreements(
    g: Sequence[int],
    found: Sequence[Claim],
    keep: Sequence[int],
    sims: np.ndarray,
    facts: _Facts,
    relevance: np.ndarray,
) -> list[tuple[float, Point]]:
    """The agreements of a group of sentences with no difference between them: each said by
    the sentence that adds least of its own and is closest to the others, cited with the
    sentences of other articles that say it too (joined through others, a group can hold
    sentences that do not: those make the next agreement, if they agree)."""
    out: list[tuple[float, Point]] = []
    left = list(g)
    while len({found[keep[x]].article for x in left}) > 1:

        def extra(x: int, left: list[int] = left) -> int:
            c = found[keep[x]]
            return sum(
                len(facts.new_figures(c, found[keep[o]].article))
                + len(facts.new_names(c, found[keep[o]].article))
                for o in left
                if found[keep[o]].article != c.article
            )

        centre = min(left, key=lambda x: (extra(x), -float(sims[x, left].sum())))
        quote = found[keep[centre]]
        saying = [
            y
            for y in left
            if found[keep[y]].article != quote.article
            and (
                sims[centre, y] >= SAME
                or (sims[centre, y] >= PAIRED and _alike(quote, found[keep[y]], facts, NAMES))
            )
        ]
        left.remove(centre)
        if not saying:
            continue
        left = [x for x in left if x not in saying]
        ordered = (quote, *(found[keep[y]] for y in saying))
        # What the other sentences name beside it.
        also = tuple(", ".join(facts.new_names(m, quote.article)[:ALSO]) for m in ordered)
        weight = len({c.article for c in ordered}) + float(
            np.mean([relevance[keep[x]] for x in [centre, *saying]])
        )
        out.append((weight, Point("agree", ordered, also)))
    return out


def compare(
    found: Sequence[Claim],
    vectors: np.ndarray,
    relevance: np.ndarray,
    texts: Sequence[str],
) -> Comparison:
    """The points of a comparison of `found` (from `claims`; `vectors` their unit vectors,
    `relevance` each one's cosine with the subject, `texts` each article's whole text):
    agreements first (the claims most articles share), then differences, then what one
    article alone states."""
    keep: list[int] = []
    for a in range(len(texts)):
        mine = sorted((i for i, c in enumerate(found) if c.article == a), key=lambda i: -relevance[i])
        keep += [i for i in mine[:CLAIMS] if relevance[i] >= RELEVANT] or mine[:2]
    keep.sort()
    sims = vectors[keep] @ vectors[keep].T
    facts = _Facts(found, texts)
    used: set[int] = set()
    agree: list[tuple[float, Point]] = []
    differ: list[tuple[float, Point]] = []
    for g in _groups(found, keep, sims, facts):
        used.update(g)
        members = tuple(found[keep[x]] for x in g)
        weight = len({c.article for c in members}) + float(np.mean([relevance[keep[x]] for x in g]))
        close = {
            (p, q): float(sims[x, y])
            for x, p in zip(g, members, strict=True)
            for y, q in zip(g, members, strict=True)
        }
        d = _differences(members, facts, close)
        if d is not None:
            what, items = d
            differing = tuple(c for c in members if c in items)
            said = tuple(", ".join(dict.fromkeys(items[c])) for c in differing)
            differ.append((weight, Point("differ", differing, said, what)))
        else:
            agree += _agreements(g, found, keep, sims, facts, relevance)
    only: list[tuple[float, Point]] = []
    for a in range(len(texts)):
        alone = [keep[x] for x in range(len(keep)) if x not in used and found[keep[x]].article == a]
        # A fact of its own: a figure or a name none of the other articles states.
        others = [b for b in range(len(texts)) if b != a]
        facts_of = [
            i
            for i in alone
            if any(all(f.value not in facts.values[b] for b in others) for f in facts.figures[found[i]])
            or any(all(not _held(n, texts[b]) for b in others) for n in facts.names[found[i]])
        ]
        facts_of.sort(key=lambda i: -relevance[i])
        only += [(float(relevance[i]), Point("only", (found[i],))) for i in facts_of[:ONLY_EACH]]
    points = [p for _, p in sorted(agree, key=lambda t: -t[0])]
    points += [p for _, p in sorted(differ, key=lambda t: -t[0])]
    points += [p for _, p in sorted(only, key=lambda t: -t[0])]
    matched = frozenset(found[keep[x]].article for x in used)
    return Comparison(tuple(_capped(points)), matched)


def _capped(points: list[Point]) -> list[Point]:
    """At most POINTS points, differences kept before agreements beyond the first few."""
    if len(points) <= POINTS:
        return points
    kinds = {k: [p for p in points if p.kind == k] for k in ("agree", "differ", "only")}
    out = kinds["differ"][: POINTS // 2]
    out += kinds["agree"][: max(POINTS // 3, POINTS - len(out) - len(kinds["only"][:2]))]
    out += kinds["only"][: POINTS - len(out)]
    return sorted(out, key=points.index)


def _cite(claims: Sequence[Claim]) -> str:
    return "".join(f"[{n}]" for n in dict.fromkeys(c.passage for c in claims))


def lines(points: Sequence[Point], labels: Sequence[str]) -> list[str]:
    """The comparison as Markdown lines: a heading per kind of point, each point cited with
    the passages of the sentences it rests on (what differs in bold); `labels` name the
    articles."""
    out: list[str] = []
    heads = {
        "agree": "**Where they agree**",
        "differ": "**Where they differ**",
        "only": "**Reported by one only**",
    }
    for kind in ("agree", "differ", "only"):
        mine = [p for p in points if p.kind == kind]
        if not mine:
            continue
        # A blank line before each heading: in Markdown it would go on the list item above.
        out += ["", heads[kind]]
        for p in mine:
            if kind == "agree":
                also = "".join(
                    f"; {labels[c.article]} also names {s} [{c.passage}]"
                    for c, s in zip(p.claims, p.said, strict=True)
                    if s
                )
                out.append(f"- {p.claims[0].text.rstrip(' .')} {_cite(p.claims)}{also}")
            elif kind == "only":
                c = p.claims[0]
                out.append(f"- {labels[c.article]}: {c.text.rstrip(' .')} [{c.passage}]")
            else:
                shown = [
                    (c, _bold(c.text.rstrip(" ."), s.split(", ") if p.what != "claims" else []))
                    for c, s in zip(p.claims, p.said, strict=True)
                    if s
                ]
                each = " · ".join(f"{labels[c.article]}: “{t}” [{c.passage}]" for c, t in shown)
                out.append(f"- The {p.what} differ. {each}")
    return out


def labels(
    titles: Sequence[str], sources: Sequence[str], dates: Sequence[str], ids: Sequence[str]
) -> list[str]:
    """A short name for each compared article: its outlet when the outlets differ, else
    its title (its id when it has none), with its date when that tells alike ones apart."""
    distinct = len(set(sources)) == len(sources) and all(sources)
    out = []
    for t, s, d, i in zip(titles, sources, dates, ids, strict=True):
        name = s if distinct else (t or i)
        if not distinct and t and titles.count(t) > 1 and d:
            name += f" ({d[:10]})"
        out.append(name)
    return out
