"""RSS and Atom feeds, parsed by feedparser: every entry becomes an article.

An entry that carries its full text (`<content:encoded>`, Atom `<content>`) is used as it is;
one that carries only a teaser is replaced by its linked page, fetched and extracted by
`rag.web`. The entry's date, author and the feed's title fill what the page leaves out.

`FeedState` remembers, per feed, the validators the server sent (ETag, Last-Modified) and the
entries already taken in, so a second pass asks conditionally and adds only what is new. It
is stored in the index (`meta` table) and committed with the articles it describes: a pass
that fails leaves the state as it was, and its entries are tried again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from .errors import InputError
from .loaders import FEED_EXTS, clean_text
from .types import Article
from .web import Fetched, fetch_page

log = logging.getLogger(__name__)

__all__ = ["FEED_EXTS", "FeedState", "entries", "parse"]
META_KEY = "feeds"
# An entry's full text (<content:encoded>, Atom <content>) shorter than this many words is a
# teaser: the linked page is fetched instead. A summary (<description>) always is.
FULL_TEXT_WORDS = 50
# Entry keys remembered per feed; feeds roll, so the oldest are forgotten past this.
MAX_SEEN = 5000


@dataclass
class FeedState:
    """What earlier passes learnt about each feed, keyed by its URL or resolved path."""

    feeds: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: bool = False

    @classmethod
    def from_json(cls, raw: str | None) -> FeedState:
        return cls(json.loads(raw) if raw else {})

    def to_json(self) -> str:
        return json.dumps(self.feeds, sort_keys=True)

    def headers(self, key: str) -> dict[str, str]:
        """Conditional-request headers for a feed seen before."""
        known = self.feeds.get(key, {})
        out = {}
        if known.get("etag"):
            out["If-None-Match"] = known["etag"]
        if known.get("modified"):
            out["If-Modified-Since"] = known["modified"]
        return out

    def seen(self, key: str) -> set[str]:
        return set(self.feeds.get(key, {}).get("seen", ()))

    def update(self, key: str, *, title: str, seen: list[str], etag: str = "", modified: str = "") -> None:
        old = self.feeds.get(key, {})
        merged = [*old.get("seen", ()), *(s for s in seen if s not in set(old.get("seen", ())))]
        new = {"title": title, "etag": etag, "modified": modified, "seen": merged[-MAX_SEEN:]}
        if new != old:
            self.feeds[key] = new
            self.changed = True


def parse(body: bytes | str, name: str) -> Any:
    """A feedparser result, or `InputError` when the document is not a feed."""
    import feedparser

    parsed = feedparser.parse(body)
    if not parsed.entries and not parsed.feed.get("title"):
        reason = getattr(parsed.get("bozo_exception"), "getMessage", lambda: "")() or "no channel or entries"
        raise InputError(name, f"not an RSS or Atom feed ({reason})")
    return parsed


def entries(
    parsed: Any,
    *,
    key: str,
    state: FeedState,
    http: Callable[[], httpx.Client],
    max_file_mb: float,
    fetched: Fetched | None = None,
) -> Iterator[Article | InputError]:
    """The articles of the entries not taken in before; the state learns each one that loads."""
    feed_title = str(parsed.feed.get("title", "") or "")
    seen = state.seen(key)
    taken: list[str] = []
    new = 0
    for entry in parsed.entries:
        entry_key = str(entry.get("id") or entry.get("link") or entry.get("title") or "")
        if not entry_key or entry_key in seen:
            continue
        new += 1
        try:
            yield _entry_article(entry, feed_title=feed_title, key=key, http=http, max_file_mb=max_file_mb)
            taken.append(entry_key)
        except InputError as e:
            yield e
    headers = fetched.headers if fetched is not None else {}
    state.update(
        key,
        title=feed_title,
        seen=taken,
        etag=headers.get("etag", ""),
        modified=headers.get("last-modified", ""),
    )
    log.info("feed %s: %d entries, %d new, %d taken in", key, len(parsed.entries), new, len(taken))


def _entry_article(
    entry: Any, *, feed_title: str, key: str, http: Callable[[], httpx.Client], max_file_mb: float
) -> Article:
    link = str(entry.get("link") or "")
    defaults = {
        "title": clean_text(str(entry.get("title") or "")),
        "date": _date(entry),
        "author": str(entry.get("author") or ""),
        "source": feed_title,
        "path": key,
    }
    own = _entry_text(entry, "content")
    if len(own.split()) < FULL_TEXT_WORDS and link:
        own = ""
    own = own or (_entry_text(entry, "summary") if not link else "")
    if own:
        return Article(
            id=link or str(entry.get("id")),
            text=own,
            title=defaults["title"] or link,
            date=defaults["date"],
            url=link,
            author=defaults["author"],
            source=feed_title,
            path=key,
        )
    if not link:
        raise InputError(f"{key}: entry {defaults['title'] or entry.get('id')!r}", "has no text and no link")
    # A page that cannot be fetched now is an error, not its teaser: the entry is not marked
    # as taken in, so the next pass tries it again.
    return fetch_page(http(), link, max_file_mb=max_file_mb, defaults=defaults)


def _entry_text(entry: Any, kind: str) -> str:
    """The longest text of an entry's `content` parts, or of its `summary`."""
    import trafilatura

    if kind == "content":
        bodies = [c.get("value", "") for c in entry.get("content", ()) or ()]
    else:
        bodies = [entry.get("summary", "") or ""]
    best = ""
    for body in bodies:
        if "<" in body:
            # A fragment: trafilatura reads whole documents.
            page = f"<html><body>{body}</body></html>"
            body = trafilatura.extract(page) or trafilatura.html2txt(page)
        text = clean_text(body)
        if len(text) > len(best):
            best = text
    return best


def _date(entry: Any) -> str:
    for name in ("published_parsed", "updated_parsed", "created_parsed"):
        value = entry.get(name)
        if value:
            return time.strftime("%Y-%m-%d", value)
    return ""
