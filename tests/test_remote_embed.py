"""Embeddings on a serving engine (`embed_backend="openai"`): a client of any OpenAI-compatible
`/v1/embeddings` endpoint, batched and retried, and `rag serve` as such an endpoint; an
index built through it is the one built in process."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import numpy as np
import openai
import pytest

import rag
from rag.embedding import RemoteEmbedder, load_embedder
from rag.store import Snapshot

from .conftest import ROOT, SAMPLE
from .test_api import KEY, rag_serve, stop_server
from .test_collections import free_port


class Endpoint(BaseHTTPRequestHandler):
    """An embeddings endpoint whose answers a test scripts: `fail` statuses first, then
    vectors of a fixed dimension (not normalised: the client normalises)."""

    fail: ClassVar[list[int]] = []
    seen: ClassVar[list[dict]] = []
    dimension = 8

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        if type(self).fail:
            status = type(self).fail.pop(0)
            self._send(status, {"error": {"message": f"scripted {status}"}}, retry_after=status == 429)
            return
        data = [
            {"object": "embedding", "index": i, "embedding": [len(t) + j for j in range(self.dimension)]}
            for i, t in enumerate(body["input"])
        ]
        data.reverse()  # engines may answer out of order: `index` says where each goes
        self._send(200, {"object": "list", "data": data, "model": body["model"]})

    def _send(self, status: int, payload: dict, retry_after: bool = False) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        if retry_after:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def endpoint(fail: list[int] | None = None) -> Iterator[str]:
    Endpoint.fail = list(fail or [])
    Endpoint.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_batches_are_sent_in_order_normalised_and_retried_when_the_server_is_busy():
    with endpoint(fail=[503, 429]) as url:
        e = RemoteEmbedder(url, model="mini", api_key="k", batch_size=3, backoff=0.01)
        assert e.base_url == url + "/v1" and e.dimension == 8 and e.backend == "openai"
        texts = ["a", "bb", "", "dddd", "eeeee", "ffffff", "g"]
        done: list[tuple[int, int]] = []
        vectors = e.encode(texts, progress=lambda d, n: done.append((d, n)))
    # The first request (the dimension) met 503 and 429 and was tried again; then 3 batches.
    posts = [s for s in Endpoint.seen if s["path"] == "/v1/embeddings"]
    assert len(posts) == 3 + 3
    assert [len(p["input"]) for p in posts[3:]] == [3, 3, 1]
    assert all(p["model"] == "mini" and p["auth"] == "Bearer k" for p in posts)
    assert posts[3]["input"][2] == " "  # an empty text is sent as a space
    assert done == [(3, 7), (6, 7), (7, 7)]
    assert vectors.shape == (7, 8) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    expected = np.arange(8, dtype=np.float32) + 4  # "dddd": its length plus j, normalised
    assert np.allclose(vectors[3], expected / np.linalg.norm(expected))


def test_a_refusal_fails_at_once_and_a_dead_server_after_its_retries_naming_the_url():
    with endpoint(fail=[401]) as url:
        with pytest.raises(rag.ModelError, match=r"answered 401: scripted 401 \(check the embed_api_key"):
            RemoteEmbedder(url, backoff=0.01)
        assert len(Endpoint.seen) == 1  # not retried: a wrong key stays wrong
    dead = f"http://127.0.0.1:{free_port()}/v1"
    start = time.monotonic()
    with pytest.raises(rag.ModelError, match=rf"cannot reach the embedding server at {dead} .* 3 tries"):
        RemoteEmbedder(dead, retries=2, backoff=0.05)
    assert time.monotonic() - start >= 0.15  # waited 0.05, then 0.1
    for bad in ("", "127.0.0.1:8080", "ftp://host/v1"):
        with pytest.raises(rag.ConfigError, match=re.escape(repr(bad))):
            RemoteEmbedder(bad)
    with pytest.raises(rag.ConfigError, match="embed_backend openai needs the server's URL"):
        load_embedder(rag.Settings(embed_backend="openai"))
    with pytest.raises(rag.ConfigError, match="embed_backend must be one of torch, openvino, openai"):
        rag.Settings(embed_backend="gpu")


def test_rag_serve_embeds_for_another_process_and_its_index_is_the_in_process_one(tmp_path, real_embedder):
    """One `rag serve` as the embedding server; `rag ingest` in another process embeds
    through it; its vectors are the in-process ones, and the index answers either way."""
    served = tmp_path / "served"
    rag.RAG(rag.Settings(index=served), embedder=real_embedder).ingest([SAMPLE])
    port = free_port()
    proc = rag_serve("--index", str(served), "--port", str(port), "--no-ui", "--api-key", KEY)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("rag serve did not come up")

        # The official client asks for base64 unless told otherwise; both shapes are served.
        client = openai.OpenAI(base_url=url, api_key=KEY)
        texts = ["Russia could sell aluminium to the United States.", "Kyiv asked for guarantees."]
        got = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
        assert got.model == "all-MiniLM-L6-v2" and [d.index for d in got.data] == [0, 1]
        assert got.usage.prompt_tokens > 0
        mine = real_embedder.encode(texts)
        assert np.allclose(np.array([d.embedding for d in got.data]), mine, atol=1e-5)
        raw = httpx.post(
            f"{url}/embeddings",
            json={"input": texts[0], "encoding_format": "base64"},
            headers={"Authorization": f"Bearer {KEY}"},
        ).json()
        decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
        assert np.allclose(decoded, mine[0], atol=1e-5)
        key = {"Authorization": f"Bearer {KEY}"}
        bad = httpx.post(f"{url}/embeddings", json={"input": "x", "model": "other"}, headers=key)
        assert bad.status_code == 404 and bad.json()["error"]["code"] == "model_not_found"
        assert httpx.post(f"{url}/embeddings", json={"input": "x"}).status_code == 401

        # `rag ingest` in another process, embedding through the server.
        remote = tmp_path / "remote"
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "rag.cli",
                "ingest",
                str(SAMPLE),
                "--index",
                str(remote),
                "--embed-backend",
                "openai",
                "--embed-base-url",
                url,
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT), "RAG_EMBED_API_KEY": KEY},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
    finally:
        stop_server(proc)

    built, local = Snapshot.open(remote), Snapshot.open(served)
    assert built.embedder["backend"] == "openai" and built.embedder["name"] == "all-MiniLM-L6-v2"
    assert len(built) == len(local)
    assert built.articles()[0].id == local.articles()[0].id
    n = len(local)
    a, b = built.vectors(list(range(n))), local.vectors(list(range(n)))
    assert np.min(np.sum(a * b, axis=1)) > 0.9999
    built.close()
    local.close()

    # Searched in process (OpenVINO): the recorded probe shows the vectors agree.
    r = rag.RAG(rag.Settings(index=remote), embedder=real_embedder)
    hits = r.retrieve("How much aluminum could Russia sell to the United States?")
    assert hits and "aluminum" in hits[0].text.lower()
