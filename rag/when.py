"""Time in a question: "in 2024", "last week", "latest", "how did it develop".

Dates are found and read by dateparser; this module only decides what each one means for
the articles: a publication-date range (absolute and relative expressions), a preference
for newer articles (recency words), or passages in date order (timeline questions)."""

from __future__ import annotations

import calendar
import functools
import logging
import re
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any

from .errors import ConfigError
from .filters import Filters

log = logging.getLogger(__name__)

# Recency and timeline words are what the issue names; they are words, not date formats.
_RECENCY = re.compile(
    r"\b(?:latest|newest|most recent(?:ly)?|recent(?:ly)?|current(?:ly)?|now|nowadays|still|"
    r"today's|these days|at present|presently|so far|to date|yet)\b",
    re.IGNORECASE,
)
_TIMELINE = re.compile(
    r"\b(?:timeline|chronolog\w*|over (?:the )?(?:time|years|months|weeks)|"
    r"how (?:did|has|have|does) .{1,80}? (?:develop|evolve|change|unfold|progress|go)\w*|"
    r"what happened (?:with|to) .{1,80}? over|history of|step by step|sequence of events)\b",
    re.IGNORECASE,
)
# "What happened yesterday?", "any news from Riverton this week?": the articles of that time
# are the answer, however little of the question's wording they share.
_DIGEST = re.compile(
    r"^\W*(?:so\s+)?what(?:'s|\s+is|\s+has|\s+was|\s+were)?\s+"
    r"(?:happened|happening|new|going on|in the news|the news)\b|\b(?:any|the|latest) news\b|^\W*news\b",
    re.IGNORECASE,
)
# Words before an absolute date that make it a bound on when the articles were published; a
# bare year ("the 2022 Super Bowl", "Super Bowl 2021 location") names an event, not a time.
_WITHIN = {"in", "during", "on", "throughout", "of", "for"}
_SINCE = {"since", "from", "between"}
_AFTER = {"after"}
_BEFORE = {"before", "prior"}
_UNTIL = {"until", "till", "by", "through", "and", "to"}
_AS_OF = {"as"}
PREPOSITIONS = _WITHIN | _SINCE | _AFTER | _BEFORE | _UNTIL | _AS_OF
# What makes a found expression a date at all: dateparser's search also reads "may", "now",
# "second" or a lone number as dates.
_UNITS = ("day", "week", "month", "year", "fortnight", "decade")
_RELATIVE = re.compile(r"\b(?:ago|yesterday|today|tonight|last|past|previous|this|recent)\b", re.IGNORECASE)
_MONTHS = tuple(m.lower() for m in calendar.month_name[1:]) + tuple(
    m.lower() for m in calendar.month_abbr[1:] if m != "May"
)
_WEEKDAYS = tuple(d.lower() for d in calendar.day_name)
_DATE_WORDS = {"yesterday", "today", "tonight", "ago", *_MONTHS, *_WEEKDAYS, "may"}
_YEAR = re.compile(r"\b(1[5-9]\d\d|2[01]\d\d)\b")
_WORD = re.compile(r"[A-Za-z']+")
# "the last 3 days", "the past two weeks": dateparser reads "3 days ago" for them.
_SPAN = re.compile(
    r"\b(?:in |over |during |within )?(?:(?:the )?(?:last|past|previous) "
    r"(\d+|one|two|three|four|five|six|seven|eight|nine|ten|twelve|a few|few)\s*|the (?:last|past) |past )"
    r"(day|week|month|year|fortnight)s?\b",
    re.IGNORECASE,
)
_NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "twelve": 12,
    "a few": 3,
    "few": 3,
}


@dataclass(frozen=True)
class QueryTime:
    """What a question says about time, read against `today`.

    Args:
        today: the date relative expressions are read from.
        expression: the words that gave the date range ("last week", "in March 2025").
        since / until: the publication-date range those words ask for (None: open).
        recency: the question asks for the newest state ("latest", "now", "still").
        timeline: the question asks how something developed: passages in date order.
        applied: the reading acted on the articles (False when no indexed article is dated:
            then it neither filters, nor orders, nor tells the model of dates).
        dates: the date words of `expression` ("in November 2024"), which the search, the
            gate and verification leave out once the range filters the articles.
        digest: the question asks what happened in its range ("What happened yesterday?"):
            the articles of that time answer it without the gate's lexical evidence.
    """

    today: date
    expression: str = ""
    since: date | None = None
    until: date | None = None
    recency: bool = False
    timeline: bool = False
    applied: bool = True
    dates: tuple[str, ...] = ()
    digest: bool = False

    @property
    def bounded(self) -> bool:
        return self.since is not None or self.until is not None

    @property
    def empty(self) -> bool:
        return not (self.bounded or self.recency or self.timeline)

    def span(self) -> str:
        """The range in words: `2026-11-30`, `2026-11-24 to 2026-12-01`, `since 2024-01-01`."""
        lo, hi = self.since, self.until
        if lo and hi:
            return lo.isoformat() if lo == hi else f"{lo.isoformat()} to {hi.isoformat()}"
        if lo:
            return f"since {lo.isoformat()}"
        if hi:
            return f"until {hi.isoformat()}"
        return ""

    def label(self) -> str:
        """For people: `since 2026-11-24 (last week)`, `newest first`; empty when the
        question says nothing of time."""
        parts = []
        if self.bounded:
            lo, hi = self.since, self.until
            span = f"since {lo.isoformat()}" if lo and hi == self.today and lo != hi else self.span()
            parts.append(f"{span} ({self.expression})" if self.expression else span)
        if self.recency:
            parts.append("newest first")
        if self.timeline:
            parts.append("in date order")
        text = "; ".join(parts)
        return text + (" (not applied: no article is dated)" if text and not self.applied else "")

    def filters(self, base: Filters | None) -> Filters | None:
        """`base` narrowed to this question's date range, or None when the two ranges do not
        meet (no article can answer)."""
        base = base or Filters()
        if not (self.bounded and self.applied):
            return base
        lo, hi = base.date_range
        since = max(d for d in (lo, self.since) if d is not None) if lo or self.since else None
        until = min(d for d in (hi, self.until) if d is not None) if hi or self.until else None
        if since and until and since > until:
            return None
        return replace(
            base, since=since.isoformat() if since else "", until=until.isoformat() if until else ""
        )

    def without(self, question: str) -> str:
        """`question` without the words of its date range once that range filters the
        articles ("Who won in 2024?" -> "Who won?"); as it was otherwise."""
        if not (self.bounded and self.applied):
            return question
        rest = question
        for piece in self.dates or (self.expression,):
            rest = rest.replace(piece, " ", 1)
        return re.sub(r"\s+([?.!,])", r"\1", " ".join(rest.split())) or question

    def to_dict(self) -> dict[str, Any]:
        return {
            "today": self.today.isoformat(),
            "expression": self.expression,
            "since": self.since.isoformat() if self.since else "",
            "until": self.until.isoformat() if self.until else "",
            "recency": self.recency,
            "timeline": self.timeline,
            "applied": self.applied,
            "dates": list(self.dates),
            "digest": self.digest,
            "label": self.label(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QueryTime:
        def day(v: Any) -> date | None:
            return date.fromisoformat(v) if v else None

        return cls(
            today=date.fromisoformat(d["today"]),
            expression=d.get("expression", ""),
            since=day(d.get("since")),
            until=day(d.get("until")),
            recency=bool(d.get("recency")),
            timeline=bool(d.get("timeline")),
            applied=bool(d.get("applied", True)),
            dates=tuple(d.get("dates") or ()),
            digest=bool(d.get("digest")),
        )


def today_of(setting: str | date | None) -> date:
    """The `today` setting as a date: `YYYY-MM-DD`, or empty for the clock's."""
    if isinstance(setting, date):
        return setting
    if not setting:
        return date.today()
    try:
        return date.fromisoformat(setting.strip())
    except ValueError:
        raise ConfigError(
            f"today={setting!r} is not a date; write it as YYYY-MM-DD, or leave it empty"
        ) from None


@functools.lru_cache(maxsize=64)
def read(question: str, today: date) -> QueryTime:
    """The time `question` speaks of, relative to `today`."""
    recency = bool(_RECENCY.search(question))
    timeline = bool(_TIMELINE.search(question))
    found = _ranges(question, today) if _maybe_dated(question) else []
    if not found:
        return QueryTime(today, recency=recency, timeline=timeline)
    since = [lo for _, lo, _ in found if lo is not None]
    until = [hi for _, _, hi in found if hi is not None]
    # The question's own words, from the first date expression to the last.
    at = [(question.find(e), len(e)) for e, _, _ in found]
    if all(p >= 0 for p, _ in at):
        expression = question[min(p for p, _ in at) : max(p + n for p, n in at)]
    else:
        expression = " ... ".join(e for e, _, _ in found)
    lo = min(since) if since else None
    hi = max(until) if until else None
    if lo and hi and lo > hi:  # "after 2025 ... before 2024": nothing sensible to keep
        log.info("time in %r contradicts itself: %s > %s", question, lo, hi)
        return QueryTime(today, recency=recency, timeline=timeline)
    digest = bool(_DIGEST.search(question))
    return QueryTime(
        today, expression, lo, hi, recency, timeline, dates=_pieces(question, found), digest=digest
    )


def _pieces(question: str, found: list[tuple[str, date | None, date | None]]) -> tuple[str, ...]:
    """The date words themselves, with the preposition just before them ("in November
    2024" of "before the election in November 2024"): what `QueryTime.without` removes."""
    out = []
    for shown, _, _ in found:
        m = re.search(
            r"(?:\b(?:" + "|".join(sorted(PREPOSITIONS)) + r")\s+)?" + re.escape(shown), question, re.I
        )
        text = m.group(0) if m else shown
        # An expression that runs from a bound word over other words keeps only its date.
        head = _WORD.findall(text.lower())[:1]
        if head and head[0] in _BEFORE | _AFTER and len(text.split()) > 3:
            last = [p for p in re.finditer(r"\b(?:" + "|".join(sorted(_WITHIN)) + r")\b", text, re.I)]
            text = text[last[-1].start() :] if last else text
        out.append(text)
    return tuple(out)


def _ranges(question: str, today: date) -> list[tuple[str, date | None, date | None]]:
    out: list[tuple[str, date | None, date | None]] = []
    taken: list[tuple[int, int]] = []
    for m in _SPAN.finditer(question):
        # A span dateparser reads as one point ("3 days ago"): from that point to today.
        n = m.group(1)
        count = int(n) if n and n.isdigit() else _NUMBER_WORDS.get((n or "one").lower(), 1)
        unit = m.group(2).lower()
        out.append((m.group(0).strip(), _minus(today, unit, count), today))
        taken.append(m.span())
    for text, when in _search(question, today):
        pos = question.find(text)
        if pos < 0 or any(a <= pos < b or a < pos + len(text) <= b for a, b in taken):
            continue
        got = _range(question, pos, text, when, today)
        if got is not None:
            out.append(got)
            taken.append((pos, pos + len(text)))
    return out


def _maybe_dated(question: str) -> bool:
    """Whether the question has anything a date could be read from: most have not, and
    dateparser costs a second and a half to load."""
    if any(ch.isdigit() for ch in question):
        return True
    words = {w.lower() for w in _WORD.findall(question)}
    return bool(words & _DATE_WORDS) or any(w.rstrip("s") in _UNITS for w in words)


def _minus(today: date, unit: str, n: int) -> date:
    if unit == "day":
        return today - timedelta(days=n)
    if unit in ("week", "fortnight"):
        return today - timedelta(days=7 * n * (2 if unit == "fortnight" else 1))
    months = n * (12 if unit == "year" else 1)
    y, m = divmod(today.month - 1 - months, 12)
    year, month = today.year + y, m + 1
    return date(year, month, min(today.day, calendar.monthrange(year, month)[1]))


def _search(question: str, today: date) -> list[tuple[str, datetime]]:
    from dateparser.search import search_dates

    found = search_dates(question, languages=["en"], settings=_settings(today)) or []
    found = _merged(question, found, today)
    out = []
    for text, when in found:
        # "last week in" (Paris): the trailing preposition belongs to the next phrase.
        words = text.split()
        while len(words) > 1 and words[-1].lower() in PREPOSITIONS:
            words.pop()
        text = " ".join(words)
        if _is_date(text):
            out.append((text, when))
    return out


def _merged(question: str, found: list[tuple[str, datetime]], today: date) -> list[tuple[str, datetime]]:
    """Neighbouring pieces read as one date: the search splits "before November 2024" into
    "November" and "2024"."""
    out: list[tuple[str, datetime]] = []
    end = -1
    pos = 0
    for text, when in found:
        at = question.find(text, pos)
        if at < 0:
            out.append((text, when))
            continue
        if out and end >= 0 and not question[end:at].strip(" ,"):
            joined = question[end - len(out[-1][0]) : at + len(text)]
            data = _parser(today).get_date_data(joined)
            if data and data.date_obj:
                out[-1] = (joined, data.date_obj)
                end = pos = at + len(text)
                continue
        out.append((text, when))
        end = pos = at + len(text)
    return out


def _settings(today: date) -> dict[str, Any]:
    return {
        "RELATIVE_BASE": datetime(today.year, today.month, today.day, 12),
        "PREFER_DATES_FROM": "past",
        "PREFER_DAY_OF_MONTH": "first",
        "RETURN_AS_TIMEZONE_AWARE": False,
    }


def _is_date(text: str) -> bool:
    low = text.lower()
    words = set(_WORD.findall(low))
    if _YEAR.search(low):
        return True
    if words & {"yesterday", "today", "tonight"}:
        return True
    if _RELATIVE.search(low) and any(w.rstrip("s") in _UNITS for w in words):
        return True
    if words & set(_WEEKDAYS):
        return True
    return (bool(words & set(_MONTHS)) and any(ch.isdigit() for ch in low)) or bool(
        words & {m for m in _MONTHS if len(m) > 3}
    )


def _period(text: str, today: date) -> str:
    data = _parser(today).get_date_data(text)
    return (data.period or "day") if data and data.date_obj else "day"


@functools.lru_cache(maxsize=4)
def _parser(today: date) -> Any:
    from dateparser.date import DateDataParser

    return DateDataParser(languages=["en"], settings=_settings(today))


def _range(
    question: str, pos: int, text: str, when: datetime, today: date
) -> tuple[str, date | None, date | None] | None:
    low = text.lower()
    words = _WORD.findall(low)
    before = _WORD.findall(question[:pos].lower())
    lead = words[0] if words and words[0] in PREPOSITIONS else (before[-1] if before else "")
    if lead in ("and", "to") and not {"between", "from"} & set(before):
        return None
    inclusive = False
    if lead == "of" and (before[-2:-1] if words[0] != "of" else before[-1:]) == ["as"]:
        lead = "as"
    elif lead in _WITHIN:
        # "before the election in November 2024": a bound at that month (the election is in
        # it, so the month itself is kept), not the month alone.
        bound = next((w for w in reversed(before[-6:]) if w in _BEFORE | _AFTER | _SINCE | _UNTIL), "")
        if bound and bound not in ("and", "to", "between", "from"):
            lead, inclusive = bound, True
    day = when.date()
    if {"yesterday", "today", "tonight"} & set(words):
        return (text, day, day)
    if _RELATIVE.search(low):
        unit = next((w.rstrip("s") for w in words if w.rstrip("s") in _UNITS), "")
        if "ago" in words:
            # "three weeks ago": that week; "two days ago": that day.
            span = {"week": 6, "month": 30, "year": 364}.get(unit, 0)
            return (text, day, min(day + timedelta(days=span), today))
        if "this" in words:
            start = {
                "week": today - timedelta(days=today.weekday()),
                "month": today.replace(day=1),
                "year": today.replace(month=1, day=1),
            }.get(unit, day)
            return (text, start, today)
        if unit == "year" and "last" in words:
            last = today.year - 1
            return (text, date(last, 1, 1), date(last, 12, 31))
        if unit == "month" and "last" in words:
            first = _minus(today.replace(day=1), "month", 1)
            return (text, first, today.replace(day=1) - timedelta(days=1))
        if any(w in _WEEKDAYS for w in words):
            return (text, day, day)
        return (text, day, today)
    # An absolute date bounds the articles only after a preposition ("in 2024", "before
    # November 2024"); "the 2022 election" names an event.
    if lead not in PREPOSITIONS:
        return None
    core = " ".join(w for w in text.split() if w.lower() not in PREPOSITIONS)
    period = _period(core, today)
    start, end = _bounds(day, period, core)
    shown = text if words and words[0] in PREPOSITIONS else f"{before[-1]} {text}"
    if lead == "as" and words[0] == "of":
        shown = f"as {text}"
    if inclusive:
        # The words from the bound on: "before the election in November 2024".
        starts = [m.start() for m in re.finditer(rf"\b{lead}\b", question[:pos], re.IGNORECASE)]
        shown = question[starts[-1] : pos + len(text)] if starts else shown
    if lead in _SINCE:
        return (shown, start, None)
    if lead in _AFTER:
        return (shown, start if inclusive else end + timedelta(days=1), None)
    if lead in _BEFORE:
        return (shown, None, end if inclusive else start - timedelta(days=1))
    if lead in _UNTIL or lead in _AS_OF:
        return (shown, None, end)
    return (shown, start, end)


def _bounds(day: date, period: str, text: str) -> tuple[date, date]:
    if period == "year" or (period != "day" and _YEAR.fullmatch(text.strip())):
        return date(day.year, 1, 1), date(day.year, 12, 31)
    if period == "month":
        return day.replace(day=1), day.replace(day=calendar.monthrange(day.year, day.month)[1])
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=6)
    return day, day
