"""Metadata filters: which articles a question may be answered from."""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any

from .errors import FilterError

_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{1,2}))?(?:-(\d{1,2}))?$")


def _tuple(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Iterable):
        raise FilterError(f"filter {name} must be a string or a list of strings, got {value!r}")
    out: list[str] = []
    for v in value:
        if not isinstance(v, str):
            raise FilterError(f"filter {name} must hold strings, got {v!r}")
        if v.strip() and v.strip() not in out:
            out.append(v.strip())
    return tuple(out)


def parse_bound(name: str, value: str, *, end: bool) -> date:
    """`2024`, `2024-03` or `2024-03-05` as a date; a partial date stands for its first day
    (`since`) or its last (`until`), so `until=2024-03` keeps all of March."""
    m = _PARTIAL_DATE.match(value.strip())
    try:
        if m is None:
            raise ValueError
        year = int(m.group(1))
        month = int(m.group(2) or (12 if end else 1))
        day = int(m.group(3)) if m.group(3) else (calendar.monthrange(year, month)[1] if end else 1)
        return date(year, month, day)
    except ValueError:
        raise FilterError(
            f"filter {name}={value!r} is not a date; write it as YYYY-MM-DD (or YYYY-MM, YYYY)"
        ) from None


def article_date(text: str) -> date | None:
    """The calendar day of an article's date as loaders found it (ISO, RFC 2822, "March 5,
    2024"...), or None when it has none or it cannot be read."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        pass
    from dateutil import parser

    try:
        # A date missing its day or month must not borrow them from today.
        return parser.parse(text, default=datetime(1, 1, 1)).date()
    except (ValueError, OverflowError, parser.ParserError):
        return None


@dataclass(frozen=True)
class Filters:
    """Restrict a question to some articles. Fields combine with AND, the values of one
    field with OR; an empty field does not filter.

    Args:
        source: publisher names, matched whole and ignoring case.
        author: names matched anywhere in the byline, ignoring case.
        since / until: inclusive dates, `YYYY-MM-DD` (or `YYYY-MM`, `YYYY`); articles
            whose date is missing or unreadable are left out when either is set.
        ids: article ids, as `rag list` shows them.
    """

    source: tuple[str, ...] = ()
    author: tuple[str, ...] = ()
    since: str = ""
    until: str = ""
    ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("source", "author", "ids"):
            object.__setattr__(self, name, _tuple(name, getattr(self, name)))
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is None:
                value = ""
            if not isinstance(value, str):
                value = value.isoformat() if isinstance(value, date) else value
            if not isinstance(value, str):
                raise FilterError(f"filter {name} must be a date string like 2024-03-05, got {value!r}")
            object.__setattr__(self, name, value.strip())
        lo, hi = self.date_range
        if lo and hi and lo > hi:
            raise FilterError(f"filter since={self.since!r} is after until={self.until!r}; swap them")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Filters:
        """From a JSON object such as `{"source": ["Reuters"], "since": "2024-01-01"}`."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise FilterError(f"filters must be an object of source/author/since/until/ids, got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FilterError(f"unknown filter {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": list(self.source),
            "author": list(self.author),
            "since": self.since,
            "until": self.until,
            "ids": list(self.ids),
        }

    @property
    def active(self) -> bool:
        return bool(self.source or self.author or self.since or self.until or self.ids)

    @property
    def date_range(self) -> tuple[date | None, date | None]:
        lo = parse_bound("since", self.since, end=False) if self.since else None
        hi = parse_bound("until", self.until, end=True) if self.until else None
        return lo, hi

    def describe(self) -> str:
        """For messages: `source=Reuters, since=2024-01-01`."""
        parts = [f"{k}={'|'.join(v) if isinstance(v, list) else v}" for k, v in self.to_dict().items() if v]
        return ", ".join(parts)
