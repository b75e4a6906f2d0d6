"""Articles from the web: a page fetched by URL, its main text and metadata extracted.

Fetching is bounded: http and https only, a timeout, a size cap (`max_file_mb`, read as a
stream so an oversized body is never held whole), at most `MAX_REDIRECTS` redirects, and a
User-Agent that says what is asking. A page's identity is its canonical URL
(`<link rel="canonical">`), else the final URL after redirects, so the same article reached
by two links is one article. Feeds (RSS/Atom) are recognised by their content and handed to
`rag.feeds`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from .errors import InputError
from .loaders import clean_text
from .types import Article

log = logging.getLogger(__name__)

TIMEOUT_S = 20.0
MAX_REDIRECTS = 5
# Fewer words than this after extraction is a menu or a stub, not an article.
MIN_PAGE_WORDS = 10
USER_AGENT = "rag-articles/0.1 (local article indexer; fetches only the URLs its user gives it)"
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_FEED_TYPES = ("application/rss+xml", "application/atom+xml", "application/rdf+xml", "application/feed+xml")
_TEXTISH = ("text/", "application/xml", "application/json", *_HTML_TYPES, *_FEED_TYPES)


def is_url(value: str) -> bool:
    """True for anything meant as a URL (a scheme followed by ://), valid or not: the
    fetcher, not the file loader, reports what is wrong with it."""
    scheme, sep, _ = str(value).partition("://")
    return bool(sep) and scheme.isalpha()


@dataclass(frozen=True)
class Fetched:
    """One HTTP response, read whole (within the size cap)."""

    url: str
    final_url: str
    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str]

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    def text(self) -> str:
        charset = ""
        for part in self.headers.get("content-type", "").split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset":
                charset = value.strip('"')
        try:
            return self.body.decode(charset or "utf-8", errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")


def client() -> httpx.Client:
    """The HTTP client every fetch uses (one per batch: connections are reused)."""
    return httpx.Client(
        timeout=TIMEOUT_S,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        headers={
            "User-Agent": USER_AGENT,
            "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.5",
        },
    )


def fetch(
    http: httpx.Client, url: str, *, max_file_mb: float, headers: Mapping[str, str] | None = None
) -> Fetched:
    """GET `url`; raises `InputError` naming the URL for anything but a usable response."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise InputError(url, "only http:// and https:// URLs can be fetched; give a full web address")
    limit = int(max_file_mb * 1024 * 1024)
    try:
        with http.stream("GET", url, headers=dict(headers or {})) as response:
            if response.status_code == 304:
                return Fetched(url, str(response.url), 304, "", b"", response.headers)
            if response.status_code >= 400:
                raise InputError(
                    url,
                    f"the server answered HTTP {response.status_code} {response.reason_phrase}; "
                    "check the URL",
                )
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise InputError(url, _too_big(int(declared), max_file_mb))
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limit:
                    raise InputError(url, _too_big(size, max_file_mb, at_least=True))
                chunks.append(chunk)
            content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            return Fetched(
                url, str(response.url), response.status_code, content_type, b"".join(chunks), response.headers
            )
    except httpx.TooManyRedirects:
        raise InputError(url, f"more than {MAX_REDIRECTS} redirects; give the page's final address") from None
    except httpx.TimeoutException:
        raise InputError(url, f"no answer within {TIMEOUT_S:g} s; try again later") from None
    except httpx.InvalidURL as e:
        raise InputError(url, f"not a valid URL ({e})") from None
    except httpx.HTTPError as e:
        raise InputError(url, f"cannot be fetched ({type(e).__name__}: {e}); check the address") from None


def _too_big(size: int, max_file_mb: float, *, at_least: bool = False) -> str:
    more = "more than " if at_least else ""
    return (
        f"{more}{size / 1024 / 1024:.1f} MB is over the size limit of {max_file_mb:g} MB; raise max_file_mb"
    )


def looks_like_feed(body: bytes, content_type: str = "") -> bool:
    """RSS, Atom or RDF, by declared type or by the first element of the document."""
    if content_type in _FEED_TYPES:
        return True
    head = body[:2048].lstrip().lower()
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    if b"<html" in head:
        return False
    return any(tag in head for tag in (b"<rss", b"<feed", b"<rdf:rdf"))


def check_readable(fetched: Fetched) -> None:
    """Refuse what is not a page or a feed (images, archives, ...) before parsing it."""
    kind = fetched.content_type
    if kind and not kind.startswith(_TEXTISH):
        raise InputError(fetched.url, f"is {kind}, not an HTML page or a feed")
    if b"\x00" in fetched.body[:8192]:
        raise InputError(fetched.url, "is binary data, not an HTML page or a feed")


def canonical_url(html: str, final_url: str) -> str:
    """The page's `<link rel="canonical">` (made absolute), else the URL it was served from."""
    import lxml.html

    try:
        tree = lxml.html.fromstring(html)
    except (ValueError, lxml.etree.ParserError):
        return final_url
    for href in tree.xpath('//link[contains(concat(" ", normalize-space(@rel), " "), " canonical ")]/@href'):
        href = str(href).strip()
        if href:
            absolute = urljoin(final_url, href)
            if urlsplit(absolute).scheme in ("http", "https"):
                return absolute
    return final_url


def page_article(html: str, *, url: str, name: str, defaults: Mapping[str, str] | None = None) -> Article:
    """The article of one HTML page: its main text (boilerplate dropped by trafilatura), title,
    date, author and site; `defaults` fill what the page does not say (a feed entry's date)."""
    import trafilatura

    doc = trafilatura.bare_extraction(html, url=url, with_metadata=True, include_comments=False)
    text = clean_text(doc.text or "") if doc is not None else ""
    if len(text.split()) < MIN_PAGE_WORDS:
        raise InputError(name, "the page holds no article text (only navigation, markup or scripts)")
    d = dict(defaults or {})
    host = urlsplit(url).hostname or ""
    return Article(
        id=url,
        text=text,
        title=(doc.title or "") or d.get("title", "") or url,
        date=d.get("date", "") or (doc.date or ""),
        url=url,
        author=(doc.author or "") or d.get("author", ""),
        source=d.get("source", "") or (doc.sitename or "") or host,
        path=d.get("path", url),
    )


def fetch_page(
    http: httpx.Client, url: str, *, max_file_mb: float, defaults: Mapping[str, str] | None = None
) -> Article:
    """Fetch and extract one page (not a feed)."""
    fetched = fetch(http, url, max_file_mb=max_file_mb)
    check_readable(fetched)
    html = fetched.text()
    final = canonical_url(html, fetched.final_url)
    return page_article(html, url=final, name=url, defaults=defaults)
