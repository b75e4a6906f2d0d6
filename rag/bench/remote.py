"""The REMOTE EMBED section (`--only remote`): the bench corpus ingested through another
process's embedder (`rag serve`'s `/v1/embeddings`, on 127.0.0.1), against ingest in process.
On one machine both share its cores, so this measures what the HTTP hop costs; on a GPU
server the remote side is the faster one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from ..settings import Settings
from .measure import ratio_of
from .startup import _model_flags, rag_command


def bench_remote_embed(
    corpus: Path, *, settings: Settings, workdir: Path, in_process_chunks_per_s: float | None
) -> dict[str, Any]:
    """`rag ingest` of `corpus` with `embed_backend="openai"` pointed at a `rag serve --no-ui`
    started here, on a fresh index; chunks/s next to the ingest section's (in process)."""
    import httpx

    from ..embedding import load_embedder
    from ..ingest import ingest

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    serve = [
        *rag_command(),
        "serve",
        "--no-ui",
        "--port",
        str(port),
        *_model_flags(settings),
        "--index",
        str(workdir / "embedding-server-index"),
    ]
    server = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("`rag serve` did not come up for the remote embedding measurement")
            time.sleep(0.5)
        remote = settings.with_(
            index=workdir / "remote-embed-index",
            embed_backend="openai",
            embed_base_url=f"http://127.0.0.1:{port}/v1",
            embed_model=settings.embedder,
        )
        t = time.perf_counter()
        report = ingest([corpus], settings=remote, embedder=load_embedder(remote))
        seconds = time.perf_counter() - t
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    chunks_per_s = report.chunks / seconds if seconds else 0.0
    return {
        "server_embed_backend": settings.embed_backend,
        "chunks": report.chunks,
        "ingest_s": round(seconds, 2),
        "chunks_per_s": round(chunks_per_s, 2),
        "in_process_chunks_per_s": in_process_chunks_per_s,
        "ratio_to_in_process": ratio_of(chunks_per_s, in_process_chunks_per_s),
    }
