"""`rag ask` and `rag chat` through a running `rag serve`: finding it, asking it, and the
in-process path when there is none."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rag import errors as rag_errors
from rag.client import SERVER, Remote, announce, find, withdraw
from ui.serving import launch

from .conftest import ROOT, SAMPLE
from .test_api import QUESTION, CannedGenerator, fake_rag, free_port, rag_serve, stop_server, wait_until_up


def test_a_server_is_found_only_when_it_lives_and_answers(tmp_path):
    index = tmp_path / "index"
    r = fake_rag(index)
    server, url = launch(r, ui=False)
    try:
        assert find(index) is None  # not announced
        path = announce(index, url)
        assert json.loads(path.read_text()) == {"url": url, "pid": os.getpid(), "key": False, "login": False}
        assert find(index) == url
        # A key it wants and the caller lacks, or a login: answered here instead.
        announce(index, url, key=True)
        assert find(index) is None and find(index, api_key="k") == url
        announce(index, url, login=True)
        assert find(index) is None
        # A process that is gone, a URL that does not answer, a torn file.
        path.write_text(json.dumps({"url": url, "pid": 2**22 + 7, "key": False, "login": False}))
        assert find(index) is None
        announce(index, f"http://127.0.0.1:{free_port()}/")
        assert find(index, timeout=0.5) is None
        path.write_text('{"url": ')
        assert find(index) is None
    finally:
        server.close()
    announce(index, url)
    withdraw(index)
    assert not (index / SERVER).exists()


def test_a_remote_answer_reads_like_a_local_one(tmp_path):
    r = fake_rag(tmp_path / "index")
    server, url = launch(r, ui=False)
    remote = Remote(url)
    try:
        stream = remote.stream(QUESTION, k=3)
        pieces = list(stream)
        local = r.ask(QUESTION, k=3)
        answer = stream.answer
        assert len(pieces) > 1 and "".join(pieces).strip() == answer.answer == local.answer
        assert (answer.found, answer.support, answer.query) == (True, "supported", QUESTION)
        assert [s.to_dict() for s in answer.sources] == [s.to_dict() for s in local.sources]
        assert answer.timings.prompt_tokens == local.timings.prompt_tokens > 0
        # Withdrawn by the server's verification: the text is replaced, the draft kept.
        r._generator = CannedGenerator(("Russia could sell ", "9 million tons to Mongolia [1]."))
        stream = remote.stream(QUESTION)
        streamed = "".join(stream).strip()
        assert stream.answer.outcome == "unsupported" and stream.answer.draft == streamed
        assert stream.answer.answer.startswith("The articles do not say.") and "Mongolia" in streamed
        # A conversation carries its turns.
        chat = remote.chat()
        r._generator = CannedGenerator()
        list(chat.stream(QUESTION))
        assert [m["role"] for m in chat.history] == ["user", "assistant"]
        # A summary, by id: the server's reads like the one made here.
        (article,) = r.articles()
        summary = remote.summarize(ids=[article.id])
        text = "".join(summary)
        local = r.summarize(ids=[article.id])
        list(local)
        assert (
            summary.answer.task == "summary" and text.strip() == summary.answer.answer == local.answer.answer
        )
        assert [s.to_dict() for s in summary.answer.sources] == [s.to_dict() for s in local.answer.sources]
        with pytest.raises(rag_errors.RagError, match="404: no article 'nope'"):
            list(remote.summarize(ids=["nope"]))
        # A comparison: the server says why there is none (one article).
        compared = remote.compare("How did outlets report the rare earth talks?")
        assert list(compared) == []
        assert compared.answer.task == "comparison" and compared.answer.support == "gate"
        assert compared.answer.answer.startswith("Only one article is about")
    finally:
        remote.close()
        server.close()


@pytest.mark.slow
def test_rag_ask_uses_the_running_server_and_local_forces_this_process(tmp_path):
    index = tmp_path / "index"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rag = [sys.executable, "-m", "rag.cli"]
    subprocess.run(
        [*rag, "ingest", str(SAMPLE), "--index", str(index)], check=True, env=env, capture_output=True
    )
    port = free_port()
    proc = rag_serve("--no-ui", "--index", str(index), "--port", str(port))
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(proc, url, 180)
        assert json.loads((index / SERVER).read_text())["url"] == url

        def ask(*flags: str) -> subprocess.CompletedProcess[str]:
            cmd = [*rag, "-v", "ask", QUESTION, "--index", str(index), *flags]
            return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

        warm = ask()
        assert warm.returncode == 0, warm.stderr
        assert f"answering through the server at {url}" in warm.stderr
        assert "2 million" in warm.stdout and "Sources:" in warm.stdout
        # Per-question settings travel with the question; --local answers here.
        assert "answering through the server" in ask("-k", "2").stderr
        local = ask("--local")
        assert local.returncode == 0 and "answering through the server" not in local.stderr
        assert "2 million" in local.stdout
        # A setting the server cannot honour: answered here.
        assert "answering through the server" not in ask("--no-verify").stderr
        # A summary of the index's only article, made by the server.
        summed = subprocess.run(
            [*rag, "-v", "summarize", "--index", str(index)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert summed.returncode == 0, summed.stderr
        assert f"answering through the server at {url}" in summed.stderr
        assert summed.stdout.startswith("- ") and "Sources:" in summed.stdout
    finally:
        stop_server(proc)
    assert not (index / SERVER).exists()
