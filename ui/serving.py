"""Serving the app: locked down at launch (`launch_options`), beside the HTTP API in one
ASGI app (`build_server`), in the background (`launch`) or until interrupted (`serve`)."""

import logging
import threading
from collections.abc import Sequence
from typing import Any

import gradio as gr

import rag
from rag import RAG, Settings

from .app import build_app
from .render import CSS, THEME

log = logging.getLogger(__name__)

# `--auth`: one (user, password) pair, or several.
Logins = tuple[str, str] | Sequence[tuple[str, str]] | None


def launch_options(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    auth: Logins = None,
) -> dict[str, Any]:
    """What `Blocks.launch` needs to serve this app locked down."""
    return {
        "server_name": host,
        "server_port": port,
        "share": False,
        "auth": auth,
        "max_file_size": int(settings.max_file_mb * 1024 * 1024),
        "theme": THEME,
        "css": CSS,
        "ssr_mode": False,
        "pwa": False,
        "mcp_server": False,
        "enable_monitoring": False,
        "run_history": False,
        "footer_links": ["api"],
        "inbrowser": False,
        "show_error": False,
        "allowed_paths": [],
        "strict_cors": True,
    }


def mount_options(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    auth: Logins = None,
) -> dict[str, Any]:
    """`launch_options` for `gr.mount_gradio_app`, which takes the same lock-down options
    (theme, css, auth, max_file_size, allowed_paths, no SSR/PWA/MCP/monitoring/run
    history...) except three it has no use for: a mounted app never opens a share link or
    a browser, and its CORS check is always the strict one."""
    options = launch_options(settings, host=host, port=port, auth=auth)
    assert options.pop("share") is False and options.pop("strict_cors") is True
    options.pop("inbrowser")
    options["server_port"] = port or 0
    return options


def build_server(
    rag_: RAG,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    auth: Logins = None,
    api_key: str | None = None,
    ui: bool = True,
) -> tuple[Any, gr.Blocks | None]:
    """One ASGI app for one `RAG`: the HTTP API under /v1 (and /health, /openapi.json) and,
    unless `ui=False`, the chat at /. Both share the model and its Gate, so an answer in
    the browser and one over the API wait for each other in the same queue."""
    from rag.server import create_app, logins_of

    auth = logins_of(auth) or None
    app = create_app(rag_, api_key=api_key, login=auth)
    if not ui:
        return app, None
    demo = build_app(rag_)
    demo.queue(default_concurrency_limit=1)
    app = gr.mount_gradio_app(
        app, demo, path="/", **mount_options(rag_.settings, host=host, port=port, auth=auth)
    )
    return app, demo


def _listen(host: str, port: int | None) -> Any:
    """A listening socket, so that a port in use fails here, with a clear reason."""
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port or 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise rag.ConfigError(f"cannot listen on {host}: {e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise rag.ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port or --host"
        ) from None
    sock.set_inheritable(True)
    return sock


def _url(sock: Any) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _uvicorn(app: Any) -> Any:
    import uvicorn

    # log_config=None: uvicorn logs through the process's own logging set-up (rag -v).
    # A short graceful shutdown: open event streams of idle browser tabs never end by themselves.
    config = uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=3)
    return uvicorn.Server(config)


class Served:
    """A server running in a background thread; `close()` stops it and frees the port."""

    def __init__(self, server: Any, thread: threading.Thread, demo: gr.Blocks | None, url: str) -> None:
        self.server = server
        self.thread = thread
        self.demo = demo
        self.url = url

    def close(self, verbose: bool = False) -> None:
        if self.demo is not None:
            # First the UI's queue and heartbeats, so that no event stream holds the shutdown.
            self.demo.close(verbose=False)
        self.server.should_exit = True
        self.thread.join(timeout=15)
        log.log(logging.INFO if verbose else logging.DEBUG, "closed the server on %s", self.url)


def launch(
    rag_: RAG,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    auth: Logins = None,
    quiet: bool = True,
    api_key: str | None = None,
    ui: bool = True,
) -> tuple[Served, str]:
    """Start the app (the UI unless `ui=False`, and the API) in the background; returns the
    server (`.close()` stops it) and its local URL. `port=None` takes a free one."""
    import time

    app, demo = build_server(rag_, host=host, port=port, auth=auth, api_key=api_key, ui=ui)
    sock = _listen(host, port)
    url = _url(sock)
    server = _uvicorn(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="rag-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise rag.RagError(f"the server on {url} did not start; rerun with `rag -v` for its log")
        time.sleep(0.02)
    log.log(logging.DEBUG if quiet else logging.INFO, "serving on %s", url)
    return Served(server, thread, demo, url), url


def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: Logins = None,
    api_key: str | None = None,
    ui: bool = True,
    watch: Sequence[str] = (),
    every: float = 900.0,
) -> None:
    """Load the models, then serve the UI (unless `ui=False`) and the API until interrupted
    (`rag serve`); `watch` folders, feeds and pages are ingested every `every` seconds."""
    r = RAG(settings)
    # Load both models before the first visitor, so that a bad model path stops the start.
    _ = r.embedder, r.generator
    if settings.read_time:
        # Reading a first date loads dateparser's data (a second or more): not on a visitor's time.
        r.query_time("What happened last week?")
    check = getattr(r.generator, "check", None)
    problem = check() if check is not None else None
    if problem:
        # The engine may well come up after us: a warning, and answers fail until it does.
        log.warning("%s", problem)
    app, demo = build_server(r, host=host, port=port, auth=auth, api_key=api_key, ui=ui)
    sock = _listen(host, port)
    url = _url(sock)
    log.info("serving %s on %s%s", settings.index, url, "" if ui else " (API only)")
    from rag.client import announce, withdraw

    # `rag ask` and `rag chat` on this index find this server here and ask it instead.
    announce(settings.index, url, key=bool(api_key or settings.api_key), login=auth is not None)
    watcher = rag.Watcher(r, list(watch), every=every).start() if watch else None
    try:
        _uvicorn(app).run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully, then re-raises the Ctrl-C: the way to stop, not an error.
        log.info("stopped")
    finally:
        if watcher is not None:
            watcher.stop()
        withdraw(settings.index)
        if demo is not None:
            demo.close(verbose=False)
        sock.close()
