"""The WEB section: generated articles served as HTML pages on 127.0.0.1, ingested by URL."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from ..settings import Settings
from .corpus import generated_article

if TYPE_CHECKING:
    from ..embedding import Encoder


def bench_web(n_pages: int, *, settings: Settings, embedder: Encoder, seed: int = 0) -> dict[str, Any]:
    """Generated articles served as HTML pages (with navigation and a footer) by a server on
    127.0.0.1: `rag ingest URL...` (fetch, extract, dedup, chunk, embed, commit) against
    fetching and extracting alone."""
    import html
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from .. import web
    from ..ingest import ingest

    rng = random.Random(seed + 7)
    pages: dict[str, bytes] = {}
    for i in range(n_pages):
        a = generated_article(i, rng)
        body = "".join(f"<p>{html.escape(p)}</p>" for p in a.text.split("\n"))
        pages[f"/news/{i}.html"] = (
            f"<!doctype html><html><head><title>{html.escape(a.title)}</title></head><body>"
            "<nav><a href='/'>Home</a> <a href='/world'>World</a> <a href='/sport'>Sport</a></nav>"
            f"<article><h1>{html.escape(a.title)}</h1>{body}</article>"
            "<footer>Copyright Bench News. Subscribe to our newsletter.</footer></body></html>"
        ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = pages.get(self.path, b"")
            self.send_response(200 if data else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        urls = [f"http://127.0.0.1:{server.server_address[1]}{p}" for p in pages]
        t = time.perf_counter()
        with web.client() as http:
            for u in urls:
                web.fetch_page(http, u, max_file_mb=settings.max_file_mb)
        fetch_s = time.perf_counter() - t
        t = time.perf_counter()
        report = ingest(urls, settings=settings, embedder=embedder)
        ingest_s = time.perf_counter() - t
    finally:
        server.shutdown()
        server.server_close()
    return {
        "pages": n_pages,
        "chunks": report.chunks,
        "added": len(report.added),
        "failed": len(report.failed),
        "fetch_extract_s": round(fetch_s, 2),
        "fetch_extract_pages_per_s": round(n_pages / fetch_s, 1),
        "ingest_s": round(ingest_s, 2),
        "pages_per_s": round(n_pages / ingest_s, 1),
    }
