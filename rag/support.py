"""Whether the articles hold the answer: a gate before the model runs, a check after it.

Before: `answerability` combines the best passage's cosine similarity with lexical evidence
(how much of the question's content, weighted by rarity in the index, one retrieved passage
holds). Off-topic questions score low on both and never reach the model.

After: `verify` reads the model's answer back against the passages it was given. Its claim
(the first sentence that says something the question does not) must add content, be
finished, be of the asked type (a date for "when", a number for "how many", a name for
"who"), and stand in one window of one or two adjacent sentences of one passage together
with the question's own content and at least half of its names, every number of the question
in that passage. A small model asked about something the passages do not hold copies a
sentence about a neighbouring subject ("Egan Bernal won the 2019 Tour de France" for 2021;
"Sundar Pichai" for Apple's chief executive): the answer's words are there, the question's are
not, or not with them.

Words are compared as the keyword index's terms (`store.terms`), and rarity is the keyword
index's own BM25 IDF. The thresholds were chosen on the dev sets in ../shared/eval and
reported on held-out ones (docs/evaluation.md).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .chunking import split_sentences
from .store import STOP_TERMS, STOPWORDS, Snapshot, terms

# Weight of the cosine against the lexical coverage in the answerability score.
COSINE_WEIGHT = 0.6
# Share (by rarity) of the answer's capitalised words and numbers that its window must hold.
MIN_KEY_SUPPORT = 0.5
# Answer sentences read: the claim is in the first ones.
CLAIM_SENTENCES = 3

_CITATIONS = re.compile(r"\s*\[\d{1,3}(?:\s*[,;]\s*\d{1,3})*\]")
_WORDS = re.compile(r"[\w'’-]+")
_FINISHED = re.compile(r"[.!?][\"'”’)\]]*\s*$")
# A claim the model finished ("... came in at.") on a word that needs one after it.
_DANGLING = frozenset(
    """a an the of to at on in into by for from with and or but as than that is was were are be been
    its their his her my our your whose which""".split()
)
_MONTHS = frozenset(
    t
    for ts in terms(
        [
            "january february march april may june july august september october november december "
            "jan feb mar apr jun jul aug sep sept oct nov dec"
        ]
    )
    for t in ts
)
_NUMBER_WORDS = re.compile(
    r"\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|"
    r"hundred|thousand|million|billion|trillion|dozen|half|once|twice)\b",
    re.IGNORECASE,
)
# What a question asks for, read from its wording: the answer must hold something of that kind.
_ASKS = (
    (
        "date",
        re.compile(
            # "When X, what Y?" asks for Y.
            r"^\s*(?:when\b(?!.*\b(?:what|which|who|whom|how)\b)|(?:in |on )?what (?:year|date|day|month)\b|"
            r"(?:in )?which year\b)|"
            r"\b(?:release|premiere|launch) date\b",
            re.IGNORECASE,
        ),
    ),
    (
        "number",
        re.compile(
            r"\bhow (?:many|much|long|old|far|big|large)\b|\bwhat (?:percentage|number|amount)\b",
            re.IGNORECASE,
        ),
    ),
    ("name", re.compile(r"^\s*(?:who|whom)\b", re.IGNORECASE)),
    (
        "yes or no",
        re.compile(
            r"^\s*(?:is|are|was|were|do|does|did|has|have|had|can|could|will|would|should|shall|may|might)\b",
            re.IGNORECASE,
        ),
    ),
)
# Words of an answer that frame a claim rather than make it: attribution, yes and no.
_NOT_CLAIMS = frozenset(
    t
    for ts in terms(["say says said saying tell tells told according reported added noted yes no not"])
    for t in ts
)
# Two or more capitalised words in a row (with "of", "the" between): a name with initials.
_PHRASE = re.compile(r"\b[A-Z][a-z]+(?:\s+(?:of\s+|the\s+)?[A-Z][a-z]+)+\b")

Rarity = Callable[[Sequence[str]], dict[str, float]]


def idf(document_frequency: int, documents: int) -> float:
    """BM25's inverse document frequency (never negative)."""
    return math.log(1.0 + (documents - document_frequency + 0.5) / (document_frequency + 0.5))


def index_rarity(snapshot: Snapshot) -> Rarity:
    """Terms' IDF over the chunks of an index: a word in no chunk is as rare as can be."""
    documents = len(snapshot)

    def rarity(words: Sequence[str]) -> dict[str, float]:
        return {w: idf(df, documents) for w, df in snapshot.document_frequencies(words).items()}

    return rarity


def content_terms(text: str) -> list[str]:
    """The distinct non-stopword terms of `text`, in order."""
    return list(dict.fromkeys(t for t in terms([text])[0] if t not in STOP_TERMS))


def strip_citations(answer: str) -> str:
    return _CITATIONS.sub("", answer).strip()


@dataclass(frozen=True)
class Answerability:
    """The evidence for answering, before the model runs."""

    cosine: float
    coverage: float
    score: float


def answerability(
    question: str, passages: Sequence[tuple[str, str]], cosines: Sequence[float], rarity: Rarity
) -> Answerability:
    """How likely the `(title, text)` passages (with their cosine similarities to the
    question) are to hold its answer: `COSINE_WEIGHT` of the best cosine plus the rest of
    the best coverage, by one passage, of the question's content terms weighted by rarity."""
    cosine = max(cosines, default=0.0)
    q = content_terms(question)
    weights = rarity(q)
    total = sum(weights[t] for t in q)
    if total > 0:
        held = [set(ts) for ts in terms([f"{title}\n{text}" for title, text in passages])]
        coverage = max((sum(weights[t] for t in q if t in h) / total for h in held), default=0.0)
    else:
        # Only stopwords ("Who is he?"): no lexical evidence either way; the cosine decides.
        coverage = cosine
    score = COSINE_WEIGHT * cosine + (1 - COSINE_WEIGHT) * coverage
    return Answerability(round(cosine, 4), round(coverage, 4), round(score, 4))


@dataclass(frozen=True)
class Verdict:
    """What `verify` found. `check` is `supported` or the check that failed; `passage` and
    `window` are the passage number and sentences that came closest to supporting it."""

    check: str
    passage: int = 0
    window: str = ""

    @property
    def supported(self) -> bool:
        return self.check == "supported"


def asks_for(question: str) -> str | None:
    """`date`, `number` or `name` when the question's wording asks for one."""
    for kind, pattern in _ASKS:
        if pattern.search(question):
            return kind
    return None


def _numeric(term: str) -> bool:
    return any(c.isdigit() for c in term)


def _keys(sentence: str, new: Sequence[str]) -> list[str]:
    """The new terms that come from capitalised words or numbers: the names and figures."""
    keys: list[str] = []
    for word in _WORDS.findall(sentence):
        if _numeric(word) or (word[:1].isupper() and word.lower() not in STOPWORDS):
            keys += [t for t in terms([word])[0] if t in new and t not in keys]
    return keys


def names_held(question: str, passages: Sequence[tuple[str, str]]) -> bool:
    """Whether every name of `question` (its capitalised words) occurs in one of the
    `(title, text)` passages: "What happened at Ashford Athletic?" is not about a flood on
    Ashford's high street."""
    names = [t for t in _keys(question, content_terms(question)) if not _numeric(t)]
    held = set().union(*terms([f"{title}\n{text}" for title, text in passages])) if passages else set()
    return all(t in held for t in names)


def _has_kind(kind: str | None, sentence: str, new: Sequence[str], keys: Sequence[str]) -> bool:
    """Whether the claim holds what the question asks for (any claim answers a yes-or-no one)."""
    if kind == "date":
        return any(_numeric(t) or t in _MONTHS for t in new)
    if kind == "number":
        return any(_numeric(t) for t in new) or bool(_NUMBER_WORDS.search(sentence))
    if kind == "name":
        return bool(keys)
    return True


def verify(
    question: str,
    answer: str,
    passages: Sequence[tuple[int, str, str]],
    rarity: Rarity,
    *,
    min_support: float = 0.35,
) -> Verdict:
    """Whether the `(n, title, text)` passages support `answer` to `question` (see the
    module's docstring). `min_support` is the share, by rarity, of the claim's new terms and
    of the question's terms that one window must hold."""
    plain = strip_citations(answer)
    question_terms = content_terms(question)
    kind = asks_for(question)
    spans = split_sentences(plain)
    sentences = [plain[s:e] for s, e in spans][:CLAIM_SENTENCES] or [plain]
    asked = Counter(t for t in terms([question])[0] if t not in STOP_TERMS)
    for sentence in sentences:
        # New: said more often than the question says it ("... in the class NP" to "NP-complete
        # problems ... in what class?" adds an NP).
        said = Counter(t for t in terms([sentence])[0] if t not in STOP_TERMS | _NOT_CLAIMS)
        new = [t for t in said if said[t] > asked[t]]
        if not new and kind != "yes or no":
            continue  # restates the question; the claim, if any, comes next
        words = _WORDS.findall(sentence)
        if words and words[-1].lower() in _DANGLING and _FINISHED.search(sentence):
            return Verdict("unfinished")
        keys = _keys(sentence, new)
        if not _has_kind(kind, sentence, new, keys):
            return Verdict(f"no {kind}")
        return _window(question, question_terms, new, keys, passages, rarity, min_support)
    return Verdict("restates the question")


def _aliases(question: str) -> list[tuple[re.Pattern[str], set[str]]]:
    """The question's names of several capitalised words, each with a pattern for its
    initials ("United States": US, U.S.): a passage that writes them holds the name."""
    out = []
    for m in _PHRASE.finditer(question):
        words = [w for w in m.group().split() if w not in ("of", "the")]
        initials = r"\.?".join(re.escape(w[0]) for w in words)
        out.append((re.compile(rf"(?<!\w){initials}\.?(?!\w)"), set(terms([m.group()])[0])))
    return out


def _window(
    question: str,
    question_terms: Sequence[str],
    new: Sequence[str],
    keys: Sequence[str],
    passages: Sequence[tuple[int, str, str]],
    rarity: Rarity,
    min_support: float,
) -> Verdict:
    aliases = _aliases(question)
    read = []
    for n, title, text in passages:
        sentences = [text[s:e] for s, e in split_sentences(text)]
        title_terms = set(terms([title])[0]) if title else set()
        held = [set(ts) | title_terms for ts in terms(sentences)] if sentences else []
        for sentence, h in zip(sentences, held, strict=True):
            for pattern, name in aliases:
                if pattern.search(sentence):
                    h |= name
        read.append((n, sentences, held, title_terms.union(*held)))
    # An ordinary word in none of the passages is the model's own wording ("rose" for
    # "raised"): it neither supports nor refutes. A name or a number in none of them is made up.
    given = set().union(*(everything for *_, everything in read))
    new = [t for t in new if t in keys or t in given]
    if not new and asks_for(question) != "yes or no":
        return Verdict("not in the passages")
    # Likewise the question's own wording ("restated" for "recast"); its numbers always count.
    # But passages holding none of the question's words are not about it at all.
    if question_terms and not any(t in given for t in question_terms):
        return Verdict("off the question")
    question_terms = [t for t in question_terms if t in given or _numeric(t)]
    # The question's names (its capitalised words) are what it is about: at least half of them
    # (by rarity) must be in the window ("Apple" for "Who is the CEO of Apple?").
    names = [t for t in _keys(question, question_terms) if not _numeric(t)]
    weights = rarity([*question_terms, *new])
    name_total = sum(weights[t] for t in names)
    q_total = sum(weights[t] for t in question_terms)
    new_total = sum(weights[t] for t in new)
    key_total = sum(weights[t] for t in keys)
    numbers = [t for t in question_terms if _numeric(t)]
    best: tuple[tuple[int, float], Verdict] | None = None
    for n, sentences, held, everything in read:
        numbers_ok = all(t in everything for t in numbers)
        for a in range(len(held)):
            for b in (a, a + 1)[: len(held) - a]:
                window = held[a] | held[b]
                # A yes or no adds no words of its own: the question's must be there.
                answer_share = sum(weights[t] for t in new if t in window) / new_total if new_total else 1.0
                key_share = sum(weights[t] for t in keys if t in window) / key_total if key_total else 1.0
                q_share = sum(weights[t] for t in question_terms if t in window) / q_total if q_total else 1.0
                name_share = sum(weights[t] for t in names if t in window) / name_total if name_total else 1.0
                failed = [
                    check
                    for check, ok in (
                        ("not in the passages", answer_share >= min_support and key_share >= MIN_KEY_SUPPORT),
                        ("other numbers", numbers_ok),
                        ("off the question", q_share >= min_support and name_share >= MIN_KEY_SUPPORT),
                    )
                    if not ok
                ]
                rank = (-len(failed), min(answer_share, key_share, q_share, name_share))
                if best is None or rank > best[0]:
                    verdict = Verdict(failed[0] if failed else "supported", n, " ".join(sentences[a : b + 1]))
                    best = (rank, verdict)
    return best[1] if best is not None else Verdict("not in the passages")
