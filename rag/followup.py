"""Follow-up questions: what to search for when a question leans on the conversation.

The model rewrites a follow-up ("And what did Kyiv ask for?") into a question that stands
alone. A small model sometimes answers instead of rewriting ("Kyiv asked for information
about rare earth metals."), and that claim, searched and shown to the model, comes back as
the answer. So a rewrite is taken only when it is still the same question: a question, not
a claim, that keeps the follow-up's own content words and adds only words the conversation
holds. Otherwise the follow-up is searched with the subject of the questions before it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .store import STOP_TERMS, terms

# Words that open a question (a rewrite without "?" opening with another word reads as a
# claim), and the words a question word may follow ("In which year ...").
_OPENERS = frozenset(
    """what which who whom whose when where why how is are was were do does did has have had can
    could will would should shall may might""".split()
)
_LEADS = frozenset("in on at for from to by of with about and".split())
# Words of a question that frame it rather than say what it is about.
_FRAMING = frozenset(
    t
    for ts in terms(
        ["say says said tell told ask asked asks about also else according happen happened", "many much"]
    )
    for t in ts
)
_WORD = re.compile(r"[\w'’-]+", re.UNICODE)
# Earlier questions read for a subject, newest first, until it has this many words.
SUBJECT_WORDS = 3
SUBJECT_QUESTIONS = 2


@dataclass(frozen=True)
class FollowUp:
    """What a follow-up is searched as: `query`, and `how` it was made: `rewrite` (the
    model's rewrite, checked), `subject` (the follow-up with the earlier questions'
    subject, the rewrite having failed `rejected`), `model` (the rewrite unchecked) or
    `alone` (the follow-up as asked)."""

    query: str
    how: str
    rewrite: str = ""
    rejected: str = ""


def _content(text: str) -> list[str]:
    return [t for t in dict.fromkeys(terms([text])[0]) if t not in STOP_TERMS]


def check(rewrite: str, question: str, conversation: Sequence[str]) -> str:
    """Why `rewrite` is not the follow-up `question` standing alone, or "" when it is."""
    text = rewrite.strip()
    if not text:
        return "empty"
    first = _WORD.findall(text.lower())[:2]
    # "At the Battle of Hastings." is an answer, "At which battle ..." a question.
    opens = bool(first) and (
        first[0] in _OPENERS or (first[0] in _LEADS and len(first) > 1 and first[1] in _OPENERS)
    )
    if not text.endswith("?") and not opens:
        return "a claim, not a question"
    said = set(_content(text))
    lost = [t for t in _content(question) if t not in said]
    if lost:
        return f"drops {', '.join(lost)}"
    known = set(_content(" ".join([question, *conversation])))
    new = [t for t in said if t not in known]
    if new:
        return f"adds {', '.join(new)}"
    return ""


def subject(questions: Sequence[str], question: str) -> str:
    """The names and content words of the latest earlier questions (newest first, at most
    `SUBJECT_QUESTIONS`, until `SUBJECT_WORDS` are found) that `question` lacks, as written."""
    have = set(_content(question))
    words: list[str] = []
    for earlier in list(reversed(questions))[:SUBJECT_QUESTIONS]:
        written = _WORD.findall(earlier)
        for w, t in zip(written, terms(written), strict=True):
            if not t or t[0] in STOP_TERMS or t[0] in _FRAMING or t[0] in have:
                continue
            have.add(t[0])
            words.append(w)
        if len(words) >= SUBJECT_WORDS:
            break
    return " ".join(words)


def with_subject(question: str, questions: Sequence[str]) -> str:
    """`question` searched together with the subject of the questions before it."""
    about = subject(questions, question)
    return f"{question} ({about})" if about else question
