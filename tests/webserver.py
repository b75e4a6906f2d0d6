"""A tiny site on 127.0.0.1 for the web, feed and watch tests: article pages wrapped in
boilerplate, a redirect, a canonical link, a 404, a binary file, an oversized page, an RSS
feed of links and an Atom feed of full texts (with ETag), each feed with a second version
that adds an item."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Three different stories, long enough to be articles.
STORIES = {
    "lynx": (
        "Lynx return to the northern forest",
        "2026-03-02",
        "Mara Lind",
        "Forest rangers counted fourteen Eurasian lynx in the northern reserve this winter, the "
        "first breeding population in the region for more than a century. The animals were "
        "released four years ago from a programme in the Carpathians. Camera traps recorded two "
        "litters of kittens in the spring, and the rangers say the roe deer the lynx hunt are "
        "plentiful enough to support twice as many. Farmers near the reserve were promised "
        "compensation for any sheep taken, but no claim has been made so far this year.",
    ),
    "bridge": (
        "Harbour bridge closes for cable repairs",
        "2026-04-11",
        "Tomas Berg",
        "The harbour bridge will close to cars for six weeks from May while engineers replace "
        "corroded suspension cables on its eastern span. Inspectors found broken wires in three "
        "of the forty cables during a routine survey in January. Buses will use a temporary "
        "lane on the lower deck and ferries will run every ten minutes at peak hours. The city "
        "council put the cost of the repairs at 38 million euros, shared with the port authority.",
    ),
    "comet": (
        "Amateur astronomer finds a new comet",
        "2026-05-20",
        "Ines Duarte",
        "A retired teacher using a backyard telescope has discovered a comet that will pass "
        "closest to the Sun next February. The comet, designated C/2026 K3, was confirmed by two "
        "observatories within a day of the report. Astronomers expect it to reach naked-eye "
        "brightness for about a week in the southern hemisphere. It is the third comet found by "
        "an amateur this decade, and the first named after a school, at the discoverer's request.",
    ),
    "festival": (
        "Folk festival sells out in an hour",
        "2026-06-01",
        "Ole Sand",
        "All twelve thousand tickets for the summer folk festival sold out within an hour of "
        "going on sale on Monday morning. The organisers added a fourth stage this year and "
        "booked forty bands from eleven countries. A waiting list opened at noon, and the "
        "festival will stream the main stage online for free. Last year's event raised money "
        "for the village school, which will get a new music room from this year's proceeds.",
    ),
}

NAV = "<nav><a href='/'>Home</a> | <a href='/news'>News</a> | <a href='/sport'>Sport</a></nav>"
FOOTER = (
    "<footer><p>Copyright 2026 Example Gazette. All rights reserved. Subscribe to our "
    "newsletter for the latest stories. Cookie settings. Privacy policy.</p></footer>"
)


def page(slug: str, *, canonical: str | None = None, site: str = "Example Gazette") -> bytes:
    title, date, author, text = STORIES[slug]
    link = f'<link rel="canonical" href="{canonical}">' if canonical else ""
    paragraphs = "".join(f"<p>{s.strip()}.</p>" for s in text.split(". ") if s.strip())
    return (
        f"<!doctype html><html><head><title>{title} | {site}</title>{link}"
        f'<meta property="og:site_name" content="{site}">'
        f'<meta name="author" content="{author}">'
        f'<meta property="article:published_time" content="{date}T08:00:00Z">'
        f"</head><body>{NAV}<article><h1>{title}</h1>{paragraphs}</article>{FOOTER}</body></html>"
    ).encode()


def rss(base: str, slugs: list[str]) -> bytes:
    items = "".join(
        f"<item><title>{STORIES[s][0]}</title><link>{base}/news/{s}.html</link>"
        f"<guid>{base}/news/{s}.html</guid><description>{STORIES[s][3][:80]}…</description>"
        f"<pubDate>{formatdate(1780000000 + i * 86400, usegmt=True)}</pubDate></item>"
        for i, s in enumerate(slugs)
    )
    return (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>Gazette News</title>'
        f"<link>{base}/</link><description>News</description>{items}</channel></rss>"
    ).encode()


def atom(base: str, slugs: list[str]) -> bytes:
    entries = "".join(
        f"<entry><title>{STORIES[s][0]}</title><id>urn:wire:{s}</id>"
        f'<link href="{base}/wire/{s}"/><updated>{STORIES[s][1]}T09:00:00Z</updated>'
        f"<author><name>{STORIES[s][2]}</name></author>"
        f'<content type="html">&lt;p&gt;{STORIES[s][3]}&lt;/p&gt;</content></entry>'
        for s in slugs
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
        f"<title>Wire Service</title><id>urn:wire</id><updated>2026-06-01T00:00:00Z</updated>{entries}</feed>"
    ).encode()


class Site:
    """What the server serves; `version` 2 adds an item to each feed."""

    def __init__(self) -> None:
        self.version = 1
        # Serve the next version from the feed's second fetch on (for `rag watch`).
        self.bump_after_feed = False
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.base = ""

    def feed_slugs(self) -> list[str]:
        return ["lynx", "bridge"] + (["festival"] if self.version >= 2 else [])

    def wire_slugs(self) -> list[str]:
        # The wire's festival story is the one the gazette's page prints: a syndicated copy.
        return ["comet"] + (["festival"] if self.version >= 2 else [])

    def respond(self, path: str) -> tuple[int, str, bytes, dict[str, str]]:
        if path in ("/news/lynx.html", "/news/bridge.html", "/news/festival.html", "/news/comet.html"):
            slug = path.rsplit("/", 1)[1].removesuffix(".html")
            return 200, "text/html; charset=utf-8", page(slug), {}
        if path == "/story":
            return 200, "text/html", page("comet", canonical="/news/comet.html"), {}
        if path == "/old-link":
            return 301, "text/html", b"", {"Location": "/news/lynx.html"}
        if path == "/loop":
            return 302, "text/html", b"", {"Location": "/loop"}
        if path == "/photo.png":
            return 200, "image/png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, {}
        if path == "/huge.html":
            return 200, "text/html", b"<html><body>" + b"<p>word </p>" * 200_000 + b"</body></html>", {}
        if path == "/empty.html":
            return 200, "text/html", b"<html><body><nav><a href='/'>Home</a></nav></body></html>", {}
        if path == "/feed.rss":
            body = rss(self.base, self.feed_slugs())
            if self.bump_after_feed:
                self.version += 1
                self.bump_after_feed = False
            return 200, "application/rss+xml", body, {}
        if path == "/wire.atom":
            body = atom(self.base, self.wire_slugs())
            return 200, "application/atom+xml", body, {"ETag": f'"wire-v{self.version}"'}
        return 404, "text/html", b"<h1>Not found</h1>", {}


@contextmanager
def serve(site: Site | None = None) -> Iterator[Site]:
    """Serve `site` on 127.0.0.1 (a free port) until the block ends."""
    site = site or Site()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            site.requests.append(("GET", self.path, dict(self.headers)))
            status, kind, body, headers = site.respond(self.path)
            etag = headers.get("ETag")
            if etag and self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.end_headers()
                return
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    site.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
