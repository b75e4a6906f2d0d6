"""The `openai` generation backend against a real OpenAI-compatible server: llama-cpp-python's
own (`python -m llama_cpp.server`) on loopback with the bundled GGUF, in a separate process.
Retrieval, prompt and citations stay in this process; only the completion call travels."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import rag
from rag.generation import BackendError, OpenAIGenerator, estimate_tokens
from rag.models import resolve_model
from ui.serving import launch

from .conftest import SAMPLE, SHARED

pytestmark = pytest.mark.slow

QUESTION = "How much aluminum could Russia sell to the United States?"


@pytest.fixture(autouse=True)
def no_remote_env(monkeypatch):
    for var in ("RAG_API_KEY", "RAG_BACKEND", "RAG_LLM_BASE_URL", "RAG_LLM_MODEL", "RAG_LLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("RAG_LLM_TIMEOUT", raising=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server with the bundled default model, with the
    context and threads the in-process generator uses; yields its /v1 URL."""
    settings = rag.Settings()
    port = free_port()
    log_path = tmp_path_factory.mktemp("engine") / "server.log"
    # The server's own Llama loads its weights as rag's does (unrepacked on AMX CPUs, whose
    # kernels crash llama.cpp: rag.generation.loading_weights).
    start = (
        "import runpy, sys; from rag.generation import loading_weights; sys.argv[0] = 'llama_cpp.server'\n"
        "with loading_weights(): runpy.run_module('llama_cpp.server', run_name='__main__')"
    )
    cmd = [
        sys.executable,
        "-c",
        start,
        "--model",
        str(resolve_model(settings.model)),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(settings.n_ctx),
        "--n_threads",
        str(settings.threads),
        "--n_threads_batch",
        str(settings.threads),
    ]
    url = f"http://127.0.0.1:{port}/v1"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"llama_cpp.server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not come up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def index(tmp_path_factory, real_embedder) -> Path:
    path = tmp_path_factory.mktemp("backend") / "index"
    rag.RAG(rag.Settings(index=path), embedder=real_embedder).ingest([SAMPLE])
    return path


def remote_rag(index: Path, embedder: Any, base_url: str, **settings: Any) -> rag.RAG:
    s = rag.Settings(index=index, backend="openai", llm_base_url=base_url, **settings)
    return rag.RAG(s, embedder=embedder)


def test_same_question_gets_the_same_cited_answer_as_in_process(engine, index, real_embedder, real_generator):
    local = rag.RAG(rag.Settings(index=index), embedder=real_embedder, generator=real_generator)
    # No model name: the backend asks the server which one it serves.
    remote = remote_rag(index, real_embedder, engine)
    expected = local.ask(QUESTION, temperature=0.0)
    stream = remote.stream(QUESTION, temperature=0.0)
    pieces = list(stream)
    got = stream.answer
    assert got is not None
    assert isinstance(remote.generator, OpenAIGenerator)
    assert remote.generator.model.endswith(".gguf")
    assert len(pieces) > 1  # streamed from the server, piece by piece

    assert "2 million" in got.answer
    cited = [s for s in got.sources if s.cited]
    assert any(f"[{s.n}]" in got.answer and any("2 million tons" in e for e in s.evidence) for s in cited), (
        got
    )
    # Same passages, same prompt, greedy decoding: the same answer.
    assert [s.chunk_id for s in got.sources] == [s.chunk_id for s in expected.sources]
    assert got.answer == expected.answer
    assert [s.n for s in got.cited_sources] == [s.n for s in expected.cited_sources]
    # The remote prompt's size is an over-estimate of the real one, never under it.
    assert got.timings.prompt_tokens >= expected.timings.prompt_tokens


def test_the_api_answers_through_the_remote_engine(engine, index, real_embedder):
    """openai client -> this server's /v1 -> the openai backend -> llama_cpp.server."""
    remote = remote_rag(index, real_embedder, engine.removesuffix("/v1"), max_queue=2)
    server, url = launch(remote, ui=False, api_key="k")
    try:
        client = openai.OpenAI(base_url=url + "v1", api_key="k", timeout=300, max_retries=0)
        resp = client.chat.completions.create(model="rag", messages=[{"role": "user", "content": QUESTION}])
    finally:
        server.close()
    answer = resp.choices[0].message.content or ""
    assert "2 million" in answer
    sources = (resp.model_extra or {})["sources"]
    assert any(s["cited"] and any("2 million tons" in e for e in s["evidence"]) for s in sources)


def test_dead_server_is_a_clear_error_at_once(index, real_embedder):
    port = free_port()  # nothing listens there
    r = remote_rag(index, real_embedder, f"http://127.0.0.1:{port}/v1", llm_model="m", llm_timeout=30)
    started = time.monotonic()
    with pytest.raises(
        BackendError, match=rf"cannot reach the generation server at http://127.0.0.1:{port}/v1"
    ) as e:
        r.ask(QUESTION)
    assert time.monotonic() - started < 10
    assert not e.value.timed_out
    assert isinstance(e.value, rag.ModelError)
    assert not r.gate.busy


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """Accepts connections, reads nothing, answers nothing."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


@pytest.mark.parametrize("model", ["m", ""])
def test_slow_server_times_out_with_a_clear_error(index, real_embedder, model):
    with silent_server() as port:
        r = remote_rag(index, real_embedder, f"http://127.0.0.1:{port}/v1", llm_model=model, llm_timeout=1.5)
        started = time.monotonic()
        with pytest.raises(BackendError, match=r"did not (answer|list its models) within 1.5 s") as e:
            r.ask(QUESTION)
        elapsed = time.monotonic() - started
    assert e.value.timed_out
    assert "llm_timeout" in str(e.value)
    assert 1.4 < elapsed < 15
    assert not r.gate.busy


class Canned(http.server.BaseHTTPRequestHandler):
    """Answers every request with the server's `status` and `body`; records what it got."""

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        server: Any = self.server
        server.requests.append((self.path, dict(self.headers), self.rfile.read(length)))
        self.send_response(server.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(server.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def canned_server(status: int, body: dict[str, Any]) -> Iterator[Any]:
    server: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    server.status, server.body, server.requests = status, json.dumps(body).encode(), []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_refusal_by_the_server_names_its_reason_and_what_to_check(index, real_embedder):
    body = {"error": {"message": "Invalid API key", "type": "invalid_request_error"}}
    with canned_server(401, body) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        r = remote_rag(index, real_embedder, url, llm_model="m", llm_api_key="upstream-key")
        with pytest.raises(BackendError) as e:
            r.ask(QUESTION)
    message = str(e.value)
    assert "answered 401: Invalid API key" in message
    assert "RAG_LLM_API_KEY" in message
    path, headers, sent = server.requests[-1]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer upstream-key"
    request = json.loads(sent)
    assert request["model"] == "m" and request["stream"] is True
    assert request["temperature"] == 0.0 and request["seed"] == 0 and request["max_tokens"] == 200
    assert request["messages"][0]["role"] == "system" and request["messages"][-1]["role"] == "user"
    assert QUESTION in request["messages"][-1]["content"]


def test_estimate_is_never_under_the_real_token_count(real_generator):
    texts = [SAMPLE.read_text(encoding="utf-8")]
    # Wikipedia text too when ../shared/ is beside the clone; the sample alone otherwise.
    articles = SHARED / "eval" / "squad-dev" / "articles.jsonl"
    if articles.exists():
        for line in articles.read_text(encoding="utf-8").splitlines()[:40]:
            text = json.loads(line).get("text", "")
            texts += [text[i : i + 700] for i in range(0, len(text), 700)]
    for text in texts:
        assert estimate_tokens(text) >= real_generator.count_tokens(text), text[:80]
    total = sum(real_generator.count_tokens(t) for t in texts)
    # Conservative, not absurd: the prompt budget still holds the passages.
    assert sum(estimate_tokens(t) for t in texts) < 2.2 * total
