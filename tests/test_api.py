"""The HTTP API of `rag serve` (/v1, beside the chat UI) against live servers on loopback:
the official `openai` client for answers, plain HTTP (httpx) for the errors."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import rag
from rag.errors import ModelError
from rag.generation import BackendError, Prompt
from rag.server import ChatCompletionChunk, create_app
from ui.serving import launch

from .conftest import ROOT, SAMPLE, FakeEmbedder
from .test_ui import answer_of

QUESTION = "How much aluminum could Russia sell to the United States?"
KEY = "test-key-7f3a"
REMOTE_VARS = (
    "RAG_API_KEY",
    "RAG_BACKEND",
    "RAG_LLM_BASE_URL",
    "RAG_LLM_MODEL",
    "RAG_LLM_API_KEY",
    "RAG_LLM_TIMEOUT",
)


@pytest.fixture(autouse=True)
def no_remote_env(monkeypatch):
    for var in REMOTE_VARS:
        monkeypatch.delenv(var, raising=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CannedGenerator:
    """A fast stand-in for the model: streams a cited answer in pieces. `delay` slows each
    piece, `fail_after` raises a backend error after that many pieces."""

    n_ctx = 4096

    def __init__(
        self,
        pieces: Sequence[str] = ("Russia could sell ", "about 2 million tons ", "of aluminum [1]."),
        *,
        delay: float = 0.0,
        fail_after: int | None = None,
        timed_out: bool = False,
    ) -> None:
        self.pieces = tuple(pieces)
        self.delay = delay
        self.fail_after = fail_after
        self.timed_out = timed_out

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def format(self, messages: Sequence[dict[str, str]]) -> Prompt:
        n = sum(len(m["content"].split()) + 4 for m in messages)
        return Prompt(tokens=range(n), stop=[], messages=tuple(messages))

    def stream(self, prompt: Prompt, *, max_tokens: int, temperature: float, seed: int) -> Iterator[str]:
        for i, piece in enumerate(self.pieces):
            if self.fail_after is not None and i >= self.fail_after:
                raise BackendError("the generation server went away", timed_out=self.timed_out)
            if self.delay:
                time.sleep(self.delay)
            yield piece


def fake_rag(index: Path, generator: Any = None, **settings: Any) -> rag.RAG:
    r = rag.RAG(rag.Settings(index=index, **settings), embedder=FakeEmbedder(), generator=generator)
    r._generator = generator or CannedGenerator()
    r.ingest([SAMPLE])
    return r


def wait_until_up(
    proc: subprocess.Popen[str], url: str, seconds: float, login: tuple[str, str] | None = None
) -> None:
    """Wait for a `rag serve` subprocess to answer /health; fail with its output if it dies."""
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, proc.communicate()
        try:
            if httpx.get(url + "health", auth=login, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "rag serve did not come up"
        time.sleep(0.5)


def rag_serve(*flags: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    """`rag serve FLAGS...` in a fresh process, its output kept for `stop_server`."""
    return subprocess.Popen(
        [sys.executable, "-m", "rag.cli", "serve", *flags],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_server(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C a `rag serve` subprocess; it must exit cleanly. Returns what it logged."""
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == 0, err
    return err


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- the real model, through the official client ------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory, real_embedder, real_generator) -> Iterator[tuple[rag.RAG, str]]:
    """UI and API in one server, as `rag serve` runs them, with a key and a queue of one."""
    index = tmp_path_factory.mktemp("api") / "index"
    r = rag.RAG(rag.Settings(index=index, max_queue=1), embedder=real_embedder, generator=real_generator)
    r.ingest([SAMPLE])
    server, url = launch(r, api_key=KEY)
    yield r, url
    server.close()


@pytest.fixture
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[1] + "v1", api_key=KEY, timeout=300, max_retries=0)


def cited_source_with(sources: list[dict[str, Any]], answer: str, fact: str) -> dict[str, Any]:
    """The source an [n] of the answer points at whose evidence holds `fact`."""
    cited = [s for s in sources if s["cited"]]
    assert cited, sources
    hits = [s for s in cited if f"[{s['n']}]" in answer and any(fact in e for e in s["evidence"])]
    assert hits, (answer, cited)
    return hits[0]


@pytest.mark.slow
def test_answer_with_cited_sources(client):
    resp = client.chat.completions.create(
        model="rag", messages=[{"role": "user", "content": QUESTION}], temperature=0
    )
    answer = resp.choices[0].message.content or ""
    assert "2 million" in answer
    assert resp.object == "chat.completion" and resp.model == "rag"
    assert resp.choices[0].finish_reason == "stop"
    extra = resp.model_extra or {}
    assert extra["found"] is True and extra["query"] == QUESTION
    source = cited_source_with(extra["sources"], answer, "2 million tons")
    # The shape of Answer.to_dict()["sources"].
    assert set(rag.Source.__dataclass_fields__) <= set(source)
    assert isinstance(source["score"], float) and source["text"]
    assert resp.usage is not None and resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0


@pytest.mark.slow
def test_streamed_answer_ends_with_its_sources(client):
    chunks = list(
        client.chat.completions.create(
            model="rag",
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 2  # streamed, not one block
    answer = "".join(pieces)
    assert "2 million" in answer
    # Sources in the final chunk, with the finish reason; then the usage chunk.
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert final.choices[0].finish_reason == "stop"
    sources = (final.model_extra or {})["sources"]
    cited_source_with(sources, answer, "2 million tons")
    assert not any((c.model_extra or {}).get("sources") for c in chunks if c is not final)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


# The bundled model answers this from the 2 million tons sentence, which names no year: the
# answer is withdrawn once it has streamed.
UNSUPPORTED = "How much aluminum did Russia sell to China in 2019?"


@pytest.mark.slow
def test_a_streamed_answer_withdrawn_by_verification_says_so_in_the_last_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model="rag", messages=[{"role": "user", "content": UNSUPPORTED}], stream=True, temperature=0
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    extra = final.model_extra or {}
    assert "2019" in streamed  # the model's claim went out as it was written...
    assert extra["withdrawn"] is True and extra["found"] is False  # ...and is withdrawn
    assert extra["support"] == "unsupported: other numbers"
    assert extra["answer"].startswith("The articles do not say. The closest passage says: “")
    assert "2019" not in extra["answer"]
    # Nothing but the last chunk carries the withdrawal.
    assert not any((c.model_extra or {}).get("withdrawn") for c in chunks if c is not final)


def test_a_withdrawn_answer_is_replaced_in_the_reply(tmp_path):
    made_up = CannedGenerator(("Russia could sell ", "about 9 million tons ", "of aluminum to Mongolia [1]."))
    r = fake_rag(tmp_path / "index", made_up)
    server, url = launch(r, ui=False)
    try:
        body = {"messages": [{"role": "user", "content": QUESTION}]}
        resp = httpx.post(url + "v1/chat/completions", json=body).json()
        assert resp["found"] is False and resp["support"] == "unsupported: not in the passages"
        content = resp["choices"][0]["message"]["content"]
        assert content.startswith("The articles do not say.") and "Mongolia" not in content
        # A supported answer says so.
        r._generator = CannedGenerator()
        resp = httpx.post(url + "v1/chat/completions", json=body).json()
        assert resp["found"] is True and resp["support"] == "supported"
    finally:
        server.close()


@pytest.mark.slow
def test_follow_up_is_rewritten_from_the_history(client):
    first = client.chat.completions.create(
        model="rag", messages=[{"role": "user", "content": QUESTION}], max_tokens=48
    )
    follow = "Who would have to lift sanctions for that?"
    resp = client.chat.completions.create(
        model="rag",
        messages=[
            {"role": "system", "content": "You are a pirate."},  # ignored: the grounding prompt is ours
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": first.choices[0].message.content or ""},
            {"role": "user", "content": follow},
        ],
        max_tokens=48,
    )
    query = (resp.model_extra or {})["query"]
    assert query != follow and query.strip()
    assert (resp.choices[0].message.content or "").strip()


@pytest.mark.slow
def test_models_lists_the_served_id(client):
    # The server's own id, then one per collection (here the default one alone).
    assert [m.id for m in client.models.list()] == ["rag", "rag/default"]
    assert client.models.retrieve("rag").id == "rag"
    assert client.models.retrieve("rag/default").id == "rag/default"
    with pytest.raises(openai.NotFoundError, match="no collection 'nope'"):
        client.models.retrieve("rag/nope")


@pytest.mark.slow
def test_retrieve_returns_passages_with_scores_and_metadata(served):
    _, url = served
    resp = httpx.post(url + "v1/retrieve", json={"query": QUESTION, "k": 3}, headers=auth())
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "list" and body["query"] == QUESTION
    assert [p["n"] for p in body["data"]] == [1, 2, 3]
    scores = [p["score"] for p in body["data"]]
    assert scores == sorted(scores, reverse=True)
    top = body["data"][0]
    assert any("2 million tons" in e for e in top["evidence"])
    assert top["article_id"] and top["text"] and top["end"] > top["start"]


@pytest.mark.slow
def test_summarize_reads_the_whole_article_and_cites_each_point(served):
    r, url = served
    (article,) = r.articles()
    resp = httpx.post(url + "v1/summarize", json={"ids": [article.id]}, headers=auth(), timeout=300)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["task"] == "summary" and body["found"] is True and body["support"] == "supported"
    lines = body["answer"].splitlines()
    assert lines and all(re.match(r"^- .+ \[\d+\]$", x) for x in lines), lines
    assert body["sources"] and all(x["cited"] and x["article_id"] == article.id for x in body["sources"])
    missing = httpx.post(url + "v1/summarize", json={"ids": ["nope"]}, headers=auth())
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "article_not_found"
    neither = httpx.post(url + "v1/summarize", json={}, headers=auth())
    assert neither.status_code == 400 and "give ids" in neither.json()["error"]["message"]


def test_compare_reads_the_articles_given_and_cites_each_point(tmp_path, real_embedder):
    r = rag.RAG(rag.Settings(index=tmp_path / "index"), embedder=real_embedder, generator=CannedGenerator())
    r.ingest([ROOT / "tests" / "data" / "compare" / "articles.jsonl"])
    server, url = launch(r, ui=False, api_key=KEY)
    try:
        by_id = httpx.post(
            url + "v1/compare", json={"ids": ["kestrel-wire", "kestrel-daily"]}, headers=auth()
        )
        assert by_id.status_code == 200, by_id.text
        body = by_id.json()
        assert body["task"] == "comparison" and body["found"] is True and body["support"] == "supported"
        assert "**240 million dollars**" in body["answer"] and "**260 million dollars**" in body["answer"]
        assert {x["article_id"] for x in body["sources"]} == {"kestrel-wire", "kestrel-daily"}
        assert all(x["cited"] and x["evidence"] for x in body["sources"])
        by_query = httpx.post(
            url + "v1/compare", json={"query": "How did outlets report the cup final?"}, headers=auth()
        )
        assert by_query.status_code == 200 and "**41,000**" in by_query.json()["answer"]
        # In the chat, the request is recognised and the last chunk says what was done.
        chat = httpx.post(
            url + "v1/chat/completions",
            json={
                "model": "rag",
                "messages": [
                    {"role": "user", "content": "Compare the coverage of the Northvale 2027 budget"}
                ],
            },
            headers=auth(),
            timeout=60,
        )
        assert chat.status_code == 200 and chat.json()["task"] == "comparison"
        one = httpx.post(url + "v1/compare", json={"ids": ["kestrel-wire"]}, headers=auth())
        assert one.status_code == 400 and one.json()["error"]["param"] == "ids"
        missing = httpx.post(url + "v1/compare", json={"ids": ["kestrel-wire", "nope"]}, headers=auth())
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "article_not_found"
        neither = httpx.post(url + "v1/compare", json={}, headers=auth())
        assert neither.status_code == 400 and "give ids" in neither.json()["error"]["message"]
    finally:
        server.close()


def test_a_summary_asked_in_the_chat_is_one_and_says_so(tmp_path):
    r = fake_rag(tmp_path / "index")
    server, url = launch(r, ui=False, api_key=KEY)
    try:
        client = openai.OpenAI(base_url=url + "v1", api_key=KEY, timeout=60, max_retries=0)
        chunks = list(
            client.chat.completions.create(
                model="rag", messages=[{"role": "user", "content": "Summarize the article."}], stream=True
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        last = chunks[-1].model_extra or {}
        assert last["task"] == "summary" and last["found"] is True
        # The canned answer, one point, cited with the passage that holds it.
        (n,) = rag.citations(text)
        assert text.strip() == f"- Russia could sell about 2 million tons of aluminum [{n}]"
        assert "2 million tons" in next(x for x in last["sources"] if x["n"] == n)["text"]
        # No empty pieces on the wire.
        assert all(
            c.choices[0].delta.content != ""
            for c in chunks[1:]
            if c.choices and c.choices[0].delta.role is None
        )
    finally:
        server.close()


@pytest.mark.slow
def test_health_needs_no_key_and_reports_the_index(served):
    _, url = served
    resp = httpx.get(url + "health")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok" and body["articles"] == 1 and body["chunks"] > 0
    assert body["queue"]["max_queue"] == 1


@pytest.mark.slow
def test_ui_is_served_by_the_same_process(served):
    _, url = served
    page = httpx.get(url)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    config = httpx.get(url + "config").json()
    assert config["title"] == "Chat with your articles"
    assert config["analytics_enabled"] is False


@pytest.mark.slow
@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        (auth("wrong"), "invalid_api_key"),
        ({"Authorization": KEY}, "missing_api_key"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "v1/models"),
        ("GET", "v1/models/rag"),
        ("POST", "v1/chat/completions"),
        ("POST", "v1/retrieve"),
        ("POST", "v1/summarize"),
        ("POST", "v1/compare"),
    ],
)
def test_every_route_but_health_needs_the_key(served, headers, code, method, path):
    _, url = served
    body = {"model": "rag", "messages": [{"role": "user", "content": QUESTION}], "query": QUESTION}
    resp = httpx.request(method, url + path, headers=headers, json=body if method == "POST" else None)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    error = resp.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == code and error["message"]


@pytest.mark.slow
def test_wrong_key_is_an_authentication_error_in_the_client(served):
    c = openai.OpenAI(base_url=served[1] + "v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        c.models.list()


BAD_REQUESTS = [
    # (what, body bytes, content type, status, code)
    ("bad JSON", b'{"model": "rag", "messages": [', "application/json", 400, "invalid_json"),
    ("not JSON at all", b"hello", "text/plain", 400, "invalid_json"),
    ("no messages", b'{"model": "rag"}', "application/json", 400, "missing_field"),
    ("empty messages", b'{"model": "rag", "messages": []}', "application/json", 400, "invalid_value"),
    (
        "last message not the user's",
        b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}',
        "application/json",
        400,
        "invalid_value",
    ),
    ("unknown role", b'{"messages": [{"role": "wizard", "content": "hi"}]}', "application/json", 400, None),
    (
        "unknown model",
        b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}',
        "application/json",
        404,
        "model_not_found",
    ),
    (
        "question too long",
        json.dumps({"messages": [{"role": "user", "content": "why? " * 500}]}).encode(),
        "application/json",
        400,
        "question_too_long",
    ),
    ("empty question", b'{"messages": [{"role": "user", "content": "  "}]}', "application/json", 400, None),
    (
        "max_tokens over the limit",
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}',
        "application/json",
        400,
        "invalid_value",
    ),
    (
        "negative temperature",
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": -1}',
        "application/json",
        400,
        "invalid_value",
    ),
    (
        "body over the size limit",
        json.dumps({"messages": [{"role": "user", "content": "x" * (2 << 20)}]}).encode(),
        "application/json",
        413,
        "request_too_large",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("what", "body", "ctype", "status", "code"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_get_openai_shaped_errors(served, what, body, ctype, status, code):
    r, url = served
    headers = {**auth(), "Content-Type": ctype}
    resp = httpx.post(url + "v1/chat/completions", content=body, headers=headers, timeout=60)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"].endswith("_error")
    if code is not None:
        assert error["code"] == code
    if code == "question_too_long":
        assert f"limit of {r.settings.max_question_chars}" in error["message"]
    # The server goes on serving.
    assert httpx.get(url + "health").status_code == 200
    assert not r.gate.busy


@pytest.mark.slow
def test_chunked_body_over_the_limit_is_refused(served):
    _, url = served

    def chunks() -> Iterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}]}'

    resp = httpx.post(
        url + "v1/chat/completions",
        content=chunks(),
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"


@pytest.mark.slow
def test_retrieve_errors(served):
    _, url = served
    cases = [
        ({"k": 3}, 400, "missing_field"),
        ({"query": "x", "k": 0}, 400, "invalid_value"),
        ({"query": "why? " * 500}, 400, "question_too_long"),
    ]
    for body, status, code in cases:
        resp = httpx.post(url + "v1/retrieve", json=body, headers=auth())
        assert resp.status_code == status, (body, resp.text)
        assert resp.json()["error"]["code"] == code


@pytest.mark.slow
def test_unknown_model_in_the_client_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": QUESTION}])
    assert "rag" in str(e.value)


@pytest.mark.slow
def test_full_queue_answers_429_and_the_waiting_request_completes(served):
    r, url = served
    body = {"model": "rag", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16}
    results: dict[str, httpx.Response] = {}

    def waiting() -> None:
        results["first"] = httpx.post(url + "v1/chat/completions", json=body, headers=auth(), timeout=300)

    with r.gate.hold():  # somebody else's answer is being generated
        thread = threading.Thread(target=waiting)
        thread.start()
        deadline = time.monotonic() + 60
        while r.gate.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.gate.waiting == 1
        # The queue (max_queue=1) is full: refused at once, streaming or not.
        for stream in (False, True):
            resp = httpx.post(url + "v1/chat/completions", json={**body, "stream": stream}, headers=auth())
            assert resp.status_code == 429
            assert resp.headers["retry-after"]
            assert resp.json()["error"]["code"] == "busy"
            assert resp.json()["error"]["type"] == "rate_limit_error"
    thread.join(timeout=300)
    assert results["first"].status_code == 200
    assert results["first"].json()["choices"][0]["message"]["content"]


# -- fast: a canned generator -------------------------------------------------------------------


def test_no_ui_serves_the_api_alone(tmp_path):
    r = fake_rag(tmp_path / "index")
    server, url = launch(r, ui=False)
    try:
        root = httpx.get(url)
        assert root.status_code == 404
        assert root.json()["error"]["type"] == "not_found_error"
        # No key configured: the API is open, and its document declares no security.
        models = httpx.get(url + "v1/models")
        assert models.status_code == 200 and models.json()["data"][0]["id"] == "rag"
        doc = httpx.get(url + "openapi.json").json()
        assert {"/v1/chat/completions", "/v1/models", "/v1/retrieve", "/health"} <= set(doc["paths"])
        assert "securitySchemes" not in doc.get("components", {})
        # Nothing is fetched from a CDN: no Swagger UI page.
        assert httpx.get(url + "docs").status_code == 404
        c = openai.OpenAI(base_url=url + "v1", api_key="unused", max_retries=0)
        resp = c.chat.completions.create(model="rag", messages=[{"role": "user", "content": QUESTION}])
        assert resp.choices[0].message.content == "Russia could sell about 2 million tons of aluminum [1]."
        # Every event of a stream is a chunk as documented, then [DONE].
        body = {"messages": [{"role": "user", "content": QUESTION}], "stream": True}
        with httpx.stream("POST", url + "v1/chat/completions", json=body) as streamed:
            assert streamed.headers["content-type"].startswith("text/event-stream")
            events = [line.removeprefix("data: ") for line in streamed.iter_lines() if line]
        assert events[-1] == "[DONE]"
        chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == resp.choices[0].message.content
        assert chunks[-1].sources and chunks[-1].found is True
    finally:
        server.close()


def test_filters_restrict_retrieve_and_chat(tmp_path):
    r = fake_rag(tmp_path / "index")
    extra = tmp_path / "extra.jsonl"
    extra.write_text(
        json.dumps(
            {"id": "ap-1", "text": "Aluminum prices rose in May.", "source": "AP", "date": "2025-05-02"}
        )
    )
    r.ingest([extra])
    server, url = launch(r, ui=False)
    try:
        query = {"query": "aluminum", "k": 10}
        everything = httpx.post(url + "v1/retrieve", json=query).json()["data"]
        assert {p["article_id"] for p in everything} > {"ap-1"}
        only = httpx.post(url + "v1/retrieve", json={**query, "filters": {"source": "ap"}}).json()["data"]
        assert {p["article_id"] for p in only} == {"ap-1"}
        dated = {"since": "2025-05", "until": "2025-05-31"}
        assert {
            p["article_id"]
            for p in httpx.post(url + "v1/retrieve", json={**query, "filters": dated}).json()["data"]
        } == {"ap-1"}
        body = {"messages": [{"role": "user", "content": QUESTION}], "filters": {"source": ["Nobody"]}}
        resp = httpx.post(url + "v1/chat/completions", json=body).json()
        assert resp["found"] is False and resp["sources"] == []
        assert "No article matches the filters (source=Nobody)" in resp["choices"][0]["message"]["content"]
        bad = httpx.post(url + "v1/retrieve", json={**query, "filters": {"since": "yesterday"}})
        assert bad.status_code == 400
        assert (
            bad.json()["error"]["code"] == "invalid_filter"
            and "since='yesterday'" in bad.json()["error"]["message"]
        )
        unknown = httpx.post(url + "v1/retrieve", json={**query, "filters": {"publisher": "AP"}})
        assert unknown.status_code == 400
    finally:
        server.close()


def test_ui_login_and_api_key_both_open_the_api(tmp_path):
    r = fake_rag(tmp_path / "index")
    server, url = launch(r, auth=("user", "secret"), api_key=KEY)
    try:
        assert httpx.get(url + "config").status_code == 401  # the UI wants its login
        assert httpx.get(url + "v1/models", headers=auth()).status_code == 200  # the API its key
        browser = httpx.Client()
        assert browser.post(url + "login", data={"username": "user", "password": "secret"}).status_code == 200
        assert browser.get(url + "config").status_code == 200
        # A UI session is no API key; the login itself, as HTTP Basic, is.
        assert browser.get(url + "v1/models").status_code == 401
        assert httpx.get(url + "v1/models", auth=("user", "secret")).status_code == 200
        assert httpx.get(url + "health").status_code == 401
        assert httpx.get(url + "health", headers=auth()).status_code == 200
        # /v1 never falls through to the UI: unknown routes and preflights get the API's answer.
        missing = httpx.get(url + "v1/nothing", headers=auth())
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        cors = {"Origin": "http://localhost:9999", "Access-Control-Request-Method": "POST"}
        preflight = httpx.options(url + "v1/chat/completions", headers=cors)
        assert preflight.status_code == 401  # a locked server answers nothing without credentials
        assert "access-control-allow-origin" not in preflight.headers
        preflight = httpx.options(url + "v1/chat/completions", headers={**cors, **auth()})
        assert preflight.status_code == 405
        assert "access-control-allow-origin" not in preflight.headers
        doc = httpx.get(url + "openapi.json", headers=auth()).json()
        schemes = sorted(s["scheme"] for s in doc["components"]["securitySchemes"].values())
        assert schemes == ["basic", "bearer"]
        # Either one opens a route: OpenAPI lists alternatives as separate requirements.
        assert len(doc["paths"]["/v1/models"]["get"]["security"]) == 2
    finally:
        server.close()


def test_error_mid_stream_reaches_the_client_as_an_error_event(tmp_path):
    r = fake_rag(tmp_path / "index", CannedGenerator(fail_after=1))
    server, url = launch(r, ui=False)
    try:
        c = openai.OpenAI(base_url=url + "v1", api_key="unused", max_retries=0)
        pieces: list[str] = []
        with pytest.raises(openai.APIError, match="generation server went away"):
            for chunk in c.chat.completions.create(
                model="rag", messages=[{"role": "user", "content": QUESTION}], stream=True
            ):
                pieces += [chunk.choices[0].delta.content or ""] if chunk.choices else []
        assert "".join(pieces) == "Russia could sell "
        assert not r.gate.busy
    finally:
        server.close()


@pytest.mark.parametrize(
    ("timed_out", "status", "code"), [(False, 502, "backend_unavailable"), (True, 504, "backend_timeout")]
)
def test_backend_failure_before_the_first_piece_is_a_gateway_error(tmp_path, timed_out, status, code):
    r = fake_rag(tmp_path / "index", CannedGenerator(fail_after=0, timed_out=timed_out))
    server, url = launch(r, ui=False)
    try:
        for stream in (False, True):
            body = {"messages": [{"role": "user", "content": QUESTION}], "stream": stream}
            resp = httpx.post(url + "v1/chat/completions", json=body)
            assert resp.status_code == status
            assert resp.json()["error"] == {
                "message": "the generation server went away",
                "type": "server_error",
                "param": None,
                "code": code,
            }
        assert httpx.get(url + "health").status_code == 200
    finally:
        server.close()


def test_client_leaving_mid_stream_frees_the_model(tmp_path):
    r = fake_rag(tmp_path / "index", CannedGenerator(["word "] * 400, delay=0.05))
    server, url = launch(r, ui=False)
    try:
        body = {"messages": [{"role": "user", "content": QUESTION}], "stream": True}
        with httpx.stream("POST", url + "v1/chat/completions", json=body) as resp:
            lines = resp.iter_lines()
            assert next(lines).startswith("data: ")
            assert r.gate.busy
        deadline = time.monotonic() + 10
        while r.gate.busy and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not r.gate.busy
    finally:
        server.close()


def test_port_in_use_is_a_clear_error(tmp_path):
    r = fake_rag(tmp_path / "index")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(rag.ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            launch(r, port=port, ui=False)


def test_remote_backend_settings_are_checked(tmp_path):
    with pytest.raises(rag.ConfigError, match="unknown backend 'vllm'"):
        _ = rag.RAG(rag.Settings(index=tmp_path, backend="vllm")).generator
    with pytest.raises(rag.ConfigError, match="needs the server's URL"):
        _ = rag.RAG(rag.Settings(index=tmp_path, backend="openai")).generator
    with pytest.raises(rag.ConfigError, match="must be an http"):
        _ = rag.RAG(rag.Settings(index=tmp_path, backend="openai", llm_base_url="localhost:8080")).generator
    assert issubclass(BackendError, ModelError)


def test_remote_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("RAG_BACKEND", "openai")
    monkeypatch.setenv("RAG_LLM_BASE_URL", "http://127.0.0.1:8080/v1")
    monkeypatch.setenv("RAG_LLM_MODEL", "qwen")
    monkeypatch.setenv("RAG_LLM_API_KEY", "upstream")
    monkeypatch.setenv("RAG_LLM_TIMEOUT", "2.5")
    monkeypatch.setenv("RAG_API_KEY", "mine")
    s = rag.Settings.load()
    assert (s.backend, s.llm_base_url, s.llm_model, s.llm_api_key, s.llm_timeout, s.api_key) == (
        "openai",
        "http://127.0.0.1:8080/v1",
        "qwen",
        "upstream",
        2.5,
        "mine",
    )


# -- the command ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_rag_serve_no_ui_with_a_key_and_an_unreachable_engine(tmp_path, real_embedder):
    """`rag serve --no-ui` end to end: the flags reach the server; a dead engine is a 502 with
    the reason, and retrieval, which needs no engine, still works."""
    index = tmp_path / "index"
    rag.RAG(rag.Settings(index=index), embedder=real_embedder).ingest([SAMPLE])
    port, dead = free_port(), free_port()
    proc = rag_serve(
        "--no-ui",
        "--index",
        str(index),
        "--port",
        str(port),
        "--api-key",
        KEY,
        "--backend",
        "openai",
        "--llm-base-url",
        f"http://127.0.0.1:{dead}/v1",
        "--llm-model",
        "m",
        "--llm-timeout",
        "5",
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(proc, url, 180)
        assert httpx.get(url).status_code == 404  # no UI
        assert httpx.get(url + "v1/models").status_code == 401
        body = {"model": "rag", "messages": [{"role": "user", "content": QUESTION}]}
        resp = httpx.post(url + "v1/chat/completions", json=body, headers=auth(), timeout=60)
        assert resp.status_code == 502
        error = resp.json()["error"]
        assert error["code"] == "backend_unavailable"
        assert f"cannot reach the generation server at http://127.0.0.1:{dead}/v1" in error["message"]
        resp = httpx.post(url + "v1/retrieve", json={"query": QUESTION}, headers=auth(), timeout=60)
        assert resp.status_code == 200 and resp.json()["data"]
    finally:
        err = stop_server(proc)
    assert f"API: http://127.0.0.1:{port}/v1" in err
    # Unreachable at start: a warning, not a refusal to start (the engine may come up later).
    assert "cannot reach the generation server" in err


def test_login_alone_guards_the_api_too(tmp_path):
    """`--auth` without `--api-key`: the API is not left open beside a locked chat."""
    r = fake_rag(tmp_path / "index")
    user, password = "lecteur", "mot-de-passe-é"  # RFC 7617: a login is UTF-8
    server, url = launch(r, auth=(user, password))
    try:
        for path in ("health", "v1/models", "openapi.json", "v1/nothing"):
            assert httpx.get(url + path).status_code == 401, path
        doc = httpx.get(url + "openapi.json", headers={"Authorization": _basic(user, password)}).json()
        assert "/v1/retrieve" in doc["paths"]
        # The document names the one way in this server takes.
        assert [s["scheme"] for s in doc["components"]["securitySchemes"].values()] == ["basic"]
        cases = [
            ({}, "missing_login"),
            ({"Authorization": _basic(user, "wrong")}, "invalid_login"),
            ({"Authorization": _basic("someone", password)}, "invalid_login"),
            ({"Authorization": f"Bearer {password}".encode()}, "missing_login"),  # the password is no key
            ({"Authorization": "Basic !!!"}, "invalid_login"),
            ({"Authorization": "Basic"}, "invalid_login"),
            ({"Authorization": "Basic " + base64.b64encode(b"no colon").decode()}, "invalid_login"),
            ({"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:x").decode()}, "invalid_login"),
            ({"Authorization": b"Basic \xe9\xe9\xe9\xe9"}, "invalid_login"),  # not even ASCII
        ]
        for headers, code in cases:
            resp = httpx.post(url + "v1/retrieve", json={"query": QUESTION}, headers=headers)
            assert resp.status_code == 401, headers
            error = resp.json()["error"]
            assert error["code"] == code, (headers, error)
            assert error["type"] == "authentication_error" and error["message"]
            assert resp.headers["www-authenticate"] == 'Basic realm="rag", charset="UTF-8"'
        ok = httpx.post(
            url + "v1/retrieve", json={"query": QUESTION}, headers={"Authorization": _basic(user, password)}
        )
        assert ok.status_code == 200 and ok.json()["data"]
        health = httpx.get(url + "health", headers={"Authorization": _basic(user, password)})
        assert health.json()["articles"] >= 1
    finally:
        server.close()
    with pytest.raises(rag.ConfigError, match="user name and a password"):
        create_app(r, login=("user", ""))
    with pytest.raises(rag.ConfigError, match="starts or ends with spaces"):
        create_app(r, api_key=" key")


def test_a_non_ascii_api_key_works_as_sent_in_utf8(tmp_path):
    r = fake_rag(tmp_path / "index")
    key = "clé-ключ"
    server, url = launch(r, ui=False, api_key=key)
    try:
        sent = httpx.get(url + "v1/models", headers={"Authorization": f"Bearer {key}".encode()})
        assert sent.status_code == 200
        wrong = httpx.get(url + "v1/models", headers={"Authorization": b"Bearer cle"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    finally:
        server.close()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.slow
def test_rag_serve_auth_refuses_the_chat_without_the_login(tmp_path, real_embedder):
    """`rag serve --auth USER:PASSWORD` end to end, as a user starts it (real models): every
    route of the chat, Gradio's API included, refuses a request without the login or with a
    wrong password; a client that logs in is answered."""
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError

    index = tmp_path / "index"
    rag.RAG(rag.Settings(index=index), embedder=real_embedder).ingest([SAMPLE])
    port = free_port()
    user, password = "reader", "s3cret-" + KEY
    proc = rag_serve("--index", str(index), "--port", str(port), "--auth", f"{user}:{password}", cwd=tmp_path)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(proc, url, 300, login=(user, password))
        ask_body = {"data": [QUESTION, 5, 0.0, 32]}
        refused = [
            ("GET", "config", None),
            ("GET", "gradio_api/info", None),
            ("GET", "gradio_api/openapi.json", None),
            ("POST", "gradio_api/call/ask", ask_body),
            ("POST", "gradio_api/run/ask", ask_body),
            ("POST", "gradio_api/queue/join", {**ask_body, "fn_index": 0, "session_hash": "x1"}),
            ("GET", "gradio_api/queue/data?session_hash=x1", None),
            ("POST", "gradio_api/upload", None),
            ("GET", f"gradio_api/file={SAMPLE}", None),
            # The API beside the chat takes the same login.
            ("GET", "health", None),
            ("GET", "v1/models", None),
            ("POST", "v1/retrieve", {"query": QUESTION}),
            ("POST", "v1/chat/completions", {"messages": [{"role": "user", "content": QUESTION}]}),
        ]
        for method, path, body in refused:
            resp = httpx.request(method, url + path, json=body, timeout=30)
            assert resp.status_code == 401, (method, path, resp.status_code, resp.text[:200])
            assert "2 million" not in resp.text
        with pytest.raises(AuthenticationError, match="credentials were not provided"):
            Client(url, verbose=False)
        wrong = httpx.post(url + "login", data={"username": user, "password": "wrong"}, timeout=30)
        assert wrong.status_code in (400, 401) and "access-token" not in wrong.cookies
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, auth=(user, "wrong"), verbose=False)

        client = Client(url, auth=(user, password), verbose=False)
        header, table = client.predict(api_name="/library")[:2]
        assert header.startswith("**1 article**") and len(table["data"]) == 1
        chat, *_ = client.predict(QUESTION, 5, 0.0, 48, api_name="/ask")
        assert "2 million" in answer_of(chat)
        for login in (None, (user, "wrong")):
            resp = httpx.post(url + "v1/retrieve", json={"query": QUESTION}, auth=login, timeout=30)
            assert resp.status_code == 401 and "2 million" not in resp.text
        resp = httpx.post(url + "v1/retrieve", json={"query": QUESTION}, auth=(user, password), timeout=60)
        assert resp.status_code == 200 and "2 million" in resp.text
    finally:
        err = stop_server(proc)
    assert "warning" not in err  # loopback, and locked: nothing to warn about


# -- the OpenAPI document, fuzzed -----------------------------------------------------------------


@pytest.mark.long
def test_openapi_document_holds_under_schemathesis(tmp_path):
    """Schemathesis against /openapi.json, with the canned generator: the schema's examples,
    then generated valid and invalid requests to every operation. No 5xx, only documented
    status codes, content types and bodies, invalid requests refused, the key enforced.

    Left out: `positive_data_acceptance`, as some schema-valid requests are refused on purpose
    for what a JSON schema cannot say (a last message that is not the user's, a question of
    blanks or over the `max_question_chars` setting)."""
    r = fake_rag(tmp_path / "index", max_queue=4)
    server, url = launch(r, ui=False, api_key=KEY)
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        url + "openapi.json",
        "--header",
        f"Authorization: Bearer {KEY}",
        "--phases",
        "examples,coverage,fuzzing",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        "40",
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--no-color",
    ]
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    finally:
        server.close()
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    assert "13 selected / 13 total" in proc.stdout
