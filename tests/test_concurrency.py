"""Several people at once: simultaneous chat clients each get the answer to their own question,
a full queue says "busy" and the server goes on, and ingesting while people chat never shows
them a broken or half-new index."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client

import rag
from rag.generation import Prompt
from ui.render import BUSY
from ui.serving import launch

from .conftest import ROOT, SAMPLE, FakeEmbedder
from .test_api import CannedGenerator
from .test_ui import answer_of, free_port, text_of

CLIENTS = 20
# A token no article holds, one per client: an answer carrying another client's token, or
# none, is a mixed-up answer.
_TOKEN = re.compile(r"\bzq\d\d\b")


class EchoGenerator(CannedGenerator):
    """A deterministic model whose answer names the token of the question it was given (read
    from the prompt itself, after the last "Question:"), streamed in pieces. `delay` per
    piece keeps answers running long enough for requests to overlap."""

    def __init__(self, delay: float = 0.02) -> None:
        super().__init__(delay=delay)

    def stream(self, prompt: Prompt, *, max_tokens: int, temperature: float, seed: int) -> Iterator[str]:
        question = prompt.messages[-1]["content"].rsplit("Question:", 1)[-1]
        tokens = " ".join(_TOKEN.findall(question)) or "nothing"
        for piece in ("The question ", f"was about {tokens} ", "and this answers it [1]."):
            if self.delay:
                time.sleep(self.delay)
            yield piece


def question_for(i: int) -> str:
    return f"How much aluminum could Russia sell, case zq{i:02d}?"


def echo_rag(index: Path, *, max_queue: int, delay: float = 0.02) -> rag.RAG:
    # The echo is about the question, not from the passages: verification (tested in
    # test_support) would withdraw it, and these tests follow each answer by its token.
    settings = rag.Settings(index=index, max_queue=max_queue, verify=False)
    r = rag.RAG(settings, embedder=FakeEmbedder(), generator=EchoGenerator(delay))
    r.ingest([SAMPLE])
    return r


def ask_all(url: str, questions: Sequence[str], *, max_tokens: int = 64) -> list[Any]:
    """One fresh client (browser session) per question, all created first, then all asking
    at the same moment; returns the jobs in question order."""
    clients: list[Client | None] = [None] * len(questions)

    def connect(i: int) -> None:
        clients[i] = Client(url, verbose=False)

    threads = [threading.Thread(target=connect, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(c is not None for c in clients), "a client could not connect"
    jobs: list[Any] = [None] * len(questions)
    go = threading.Barrier(len(questions))

    def submit(i: int) -> None:
        go.wait(timeout=60)
        c = clients[i]
        assert c is not None
        jobs[i] = c.submit(questions[i], 3, 0.0, max_tokens, api_name="/ask")

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(j is not None for j in jobs)
    return jobs


def own_answer(chat: list[dict[str, Any]], question: str) -> str:
    """The answer of a one-turn chat, after checking the turn is this client's own question."""
    assert [text_of(m) for m in chat if m["role"] == "user"] == [question]
    return answer_of(chat)


def test_twenty_simultaneous_clients_each_get_their_own_answer(tmp_path, capsys):
    r = echo_rag(tmp_path / "index", max_queue=32)
    server, url = launch(r, port=free_port())
    try:
        questions = [question_for(i) for i in range(CLIENTS)]
        jobs = ask_all(url, questions)
        served = 0
        for i, job in enumerate(jobs):
            chat, _, sources, _, status, _ = job.result(timeout=120)
            answer = own_answer(chat, questions[i])
            assert status == "", (i, status)
            assert _TOKEN.findall(answer) == [f"zq{i:02d}"], (i, answer)
            assert "2 million tons" in sources  # retrieved for this question, not left empty
            served += 1
    finally:
        server.close()
    with capsys.disabled():
        print(f"\nconcurrent clients: {CLIENTS} asked, {served} served their own answer")
    assert served == CLIENTS
    assert not r.gate.busy and r.gate.waiting == 0


def test_clients_past_a_full_queue_are_told_busy_and_the_server_goes_on(tmp_path, capsys):
    max_queue = 4
    r = echo_rag(tmp_path / "index", max_queue=max_queue)
    server, url = launch(r, port=free_port())
    try:
        questions = [question_for(i) for i in range(CLIENTS)]
        # Somebody else's answer is being generated while all twenty ask: four of them may
        # wait for the model, the sixteen past the queue are told it is busy.
        with r.gate.hold():
            jobs = ask_all(url, questions)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if sum(j.done() for j in jobs) == CLIENTS - max_queue and r.gate.waiting == max_queue:
                    break
                time.sleep(0.05)
            else:
                pytest.fail(f"{sum(j.done() for j in jobs)} done, {r.gate.waiting} waiting")
        busy = answered = 0
        for i, job in enumerate(jobs):
            chat, _, _, _, status, _ = job.result(timeout=120)
            answer = own_answer(chat, questions[i])
            if status == BUSY:
                assert answer == BUSY and "Try again" in answer
                busy += 1
            else:
                assert status == "", (i, status)
                assert _TOKEN.findall(answer) == [f"zq{i:02d}"], (i, answer)
                answered += 1
        # The server goes on: a fresh client is answered at once, the queue is empty.
        chat, _, _, _, status, _ = Client(url, verbose=False).predict(
            question_for(99), 3, 0.0, 64, api_name="/ask"
        )
        assert status == "" and _TOKEN.findall(answer_of(chat)) == ["zq99"]
    finally:
        server.close()
    with capsys.disabled():
        print(f"\nqueue of {max_queue}, {CLIENTS} clients: {answered} answered, {busy} told busy")
    assert (answered, busy) == (max_queue, CLIENTS - max_queue)
    assert not r.gate.busy and r.gate.waiting == 0


# -- the real model -------------------------------------------------------------------------------

# Twenty towns, each with one fact only its own article holds.
TOWNS = [
    ("Arlen", "heron"),
    ("Brosk", "badger"),
    ("Calder", "otter"),
    ("Dunmore", "falcon"),
    ("Eskby", "lynx"),
    ("Falwick", "beaver"),
    ("Gorran", "raven"),
    ("Hadley", "stag"),
    ("Irvane", "hedgehog"),
    ("Jessop", "owl"),
    ("Kilbride", "salmon"),
    ("Lorton", "fox"),
    ("Marrow", "hare"),
    ("Nettlebed", "wolf"),
    ("Oakhurst", "swan"),
    ("Pellow", "bison"),
    ("Quarrydale", "eagle"),
    ("Rusholme", "tortoise"),
    ("Stanwick", "dolphin"),
    ("Tolland", "panther"),
]


@pytest.mark.slow
@pytest.mark.long
def test_twenty_clients_on_the_real_model_each_get_their_own_fact(
    tmp_path, real_embedder, real_generator, capsys
):
    docs = tmp_path / "docs"
    docs.mkdir()
    for town, animal in TOWNS:
        (docs / f"{town.lower()}.md").write_text(
            f"# {town} football club picks a mascot\n\n"
            f"The {town} football club chose a {animal} as its new mascot on Tuesday. "
            f"The club's supporters voted for the {animal} in a poll last month.\n",
            encoding="utf-8",
        )
    settings = rag.Settings(index=tmp_path / "index", max_queue=32)
    r = rag.RAG(settings, embedder=real_embedder, generator=real_generator)
    r.ingest([docs])
    assert len(r.articles()) == CLIENTS
    server, url = launch(r, port=free_port())
    start = time.perf_counter()
    try:
        questions = [f"Which animal did the {town} football club choose as its mascot?" for town, _ in TOWNS]
        jobs = ask_all(url, questions, max_tokens=48)
        served = 0
        wrong = []
        for (town, animal), question, job in zip(TOWNS, questions, jobs, strict=True):
            chat, *_, status, _ = job.result(timeout=900)
            answer = own_answer(chat, question)
            assert status == "", (town, status)
            # Its own fact, and no other client's: the model saw this question's passages.
            others = [a for t, a in TOWNS if t != town and re.search(rf"\b{a}\b", answer, re.I)]
            if re.search(rf"\b{animal}\b", answer, re.I) and not others:
                served += 1
            else:
                wrong.append((town, answer))
    finally:
        server.close()
    with capsys.disabled():
        print(
            f"\nreal model, {CLIENTS} concurrent clients: {served} got their own fact "
            f"in {time.perf_counter() - start:.0f} s; wrong: {wrong}"
        )
    assert served == CLIENTS, wrong


# -- ingesting while people chat ------------------------------------------------------------------

ARTICLES = 6
VERSIONS = 30
_VERSION = re.compile(r"\bversion (\d+)\b")


def write_version(folder: Path, version: int) -> None:
    """Every sentence of every article names the version, so every chunk does."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(ARTICLES):
        text = " ".join(
            f"Article {i} version {version} sentence {j} tells of harbour cranes and ferries."
            for j in range(12 + i)
        )
        (folder / f"a{i}.txt").write_text(text, encoding="utf-8")


def ingest_while_reading(folder: Path) -> dict[str, Any]:
    """Readers ask and retrieve in a loop while a writer commits new versions of every
    article; returns what each reader saw and any error it met."""
    # verify off: the echo is not from the passages (see echo_rag).
    # Templated articles are near-duplicates by design: every one is indexed here.
    settings = rag.Settings(
        index=folder / "index", chunk_tokens=40, chunk_overlap=8, top_k=8, verify=False, dedup_threshold=0
    )
    embedder = FakeEmbedder()
    docs = folder / "docs"
    write_version(docs, 0)
    shared = rag.RAG(settings, embedder=embedder, generator=EchoGenerator(delay=0))
    shared.ingest([docs])
    # Two readers share the writer's object, as the chat's sessions do; one has its own, as
    # another worker process on the same index would.
    own = rag.RAG(settings, embedder=embedder, generator=EchoGenerator(delay=0))
    readers = [shared, shared, own]
    done = threading.Event()
    errors: list[str] = []
    seen: list[list[int]] = [[] for _ in readers]

    def read(n: int) -> None:
        r = readers[n]
        calls = 0
        while True:
            # One more read after the writer is done: it must see the last commit.
            last = done.is_set()
            calls += 1
            query = f"harbour cranes sentence {calls % 12}"
            try:
                if calls % 3 == 0:
                    answer = r.ask(query)
                    texts = [s.text for s in answer.sources]
                    assert answer.found, answer.answer
                else:
                    texts = [s.text for s in r.retrieve(query)]
            except Exception as e:
                errors.append(f"reader {n} call {calls}: {type(e).__name__}: {e}")
                return
            versions = {int(v) for t in texts for v in _VERSION.findall(t)}
            if not texts or len(versions) != 1 or not all(_VERSION.search(t) for t in texts):
                errors.append(f"reader {n} call {calls}: versions {sorted(versions)}, {len(texts)} passages")
                return
            seen[n].append(versions.pop())
            if last:
                return

    threads = [threading.Thread(target=read, args=(n,), daemon=True) for n in range(len(readers))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    try:
        for version in range(1, VERSIONS + 1):
            write_version(docs, version)
            report = shared.ingest([docs])
            assert len(report.updated) == ARTICLES, report
            time.sleep(0.01)
    finally:
        done.set()
        for t in threads:
            t.join(timeout=60)
    return {"errors": errors, "seen": seen, "seconds": time.perf_counter() - start}


def test_readers_see_one_whole_generation_while_a_writer_ingests(tmp_path, capsys):
    """Each result comes from one generation: all its passages of one version, never an
    error, and no reader ever goes back to an older version. Run in a child process, so
    that a crash of the readers is this test's failure, not the end of the test session:
    when RAG.snapshot() closed the snapshot it replaced while other threads were searching
    it, readers got "Cannot operate on a closed database" or died in SQLite (SIGSEGV)."""
    code = (
        "import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
        "from tests.test_concurrency import ingest_while_reading; "
        "print('RESULT ' + json.dumps(ingest_while_reading(Path(sys.argv[2]))))"
    )
    proc = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", code, str(ROOT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"the readers' process ended with {proc.returncode}: {proc.stderr[-3000:]}"
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    errors, seen = result["errors"], result["seen"]
    reads = sum(len(s) for s in seen)
    with capsys.disabled():
        print(
            f"\ningest while chatting: {VERSIONS} commits, {reads} reads in {result['seconds']:.1f} s, "
            f"versions seen per reader {[len(set(s)) for s in seen]}, errors {len(errors)}"
        )
    assert not errors, errors[:5]
    for s in seen:
        assert s == sorted(s), "a reader went back to an older generation"
        assert s[-1] == VERSIONS
    # The readers did overlap the commits, not just run before or after them.
    assert len({v for s in seen for v in s}) > 2
