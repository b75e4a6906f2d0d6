"""Saved conversations (`rag.chats`) and follow-ups that stay questions (`rag.followup`):
the store, the pipeline's sessions across a restart, the CLI, and the API with two users."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import rag
from rag import followup
from rag.chats import CHATS, Chats, markdown
from rag.cli import cli
from rag.generation import Prompt
from ui.serving import launch

from .conftest import SAMPLE, FakeEmbedder

RECORD = {
    "answer": "Russia could sell about 2 million tons of aluminum [1].",
    "found": True,
    "support": "supported",
    "query": "How much aluminum could Russia sell?",
    "sources": [
        {
            "n": 1,
            "article_id": "a1",
            "title": "Russia offers rare earths",
            "url": "https://example.org/a1",
            "date": "2025-02-25",
            "source": "Example News",
            "cited": True,
            "text": "Putin suggested that Russia could sell about 2 million tons of aluminum.",
            "score": 0.71,
        },
        {
            "n": 2,
            "article_id": "a2",
            "title": "",
            "url": "",
            "date": "",
            "source": "",
            "cited": False,
            "text": "Kyiv seeks guarantees.",
            "score": 0.4,
        },
    ],
}


def test_turns_are_saved_beside_the_generations_and_read_back(tmp_path):
    index = tmp_path / "index"
    r = rag.RAG(rag.Settings(index=index), embedder=FakeEmbedder())
    r.ingest([SAMPLE])
    store = r.chats
    store.add("c1", "How much aluminum could Russia sell?", RECORD)
    store.add("c2", "Who is Kirill Dmitriev?", {**RECORD, "answer": "An envoy [1]."})
    store.add("c1", "On what condition?", {**RECORD, "answer": "If sanctions are lifted [1]."})

    assert (index / CHATS).is_file()
    assert not any(p.name == CHATS for p in index.glob("gen-*/*"))
    # A commit replaces the generation, not the chats beside it.
    r.ingest([tmp_path / "missing.txt"])
    (tmp_path / "more.txt").write_text("Another article about aluminium prices.", encoding="utf-8")
    r.ingest([tmp_path / "more.txt"])
    listed = Chats(index).list()
    assert [c.id for c in listed] == ["c1", "c2"]  # the one continued last first
    assert [c.count for c in listed] == [2, 1]
    assert listed[0].title == "How much aluminum could Russia sell?"

    chat = Chats(index).get("c1")
    assert [t.question for t in chat.turns] == ["How much aluminum could Russia sell?", "On what condition?"]
    assert chat.turns[1].answer == "If sanctions are lifted [1]."
    assert chat.turns[0].sources[0]["title"] == "Russia offers rare earths"
    assert chat.messages() == [
        {"role": "user", "content": "How much aluminum could Russia sell?"},
        {"role": "assistant", "content": RECORD["answer"]},
        {"role": "user", "content": "On what condition?"},
        {"role": "assistant", "content": "If sanctions are lifted [1]."},
    ]
    back = rag.Answer.from_dict(chat.turns[0].record)
    assert back.found and back.sources[0].cited and back.outcome == "found"


def test_each_user_sees_only_their_own_chats(tmp_path):
    store = Chats(tmp_path)
    store.add("mine", "Alice's question", RECORD, user="alice")
    store.add("theirs", "Bob's question", RECORD, user="bob")
    assert [c.id for c in store.list(user="alice")] == ["mine"]
    assert [c.id for c in store.list(user="bob")] == ["theirs"]
    assert store.list() == []
    for action in (
        lambda: store.get("theirs", user="alice"),
        lambda: store.rename("theirs", "taken", user="alice"),
        lambda: store.delete("theirs", user="alice"),
        lambda: store.add("theirs", "a turn in Bob's chat", RECORD, user="alice"),
        lambda: store.find("theirs", user="alice"),
    ):
        with pytest.raises(rag.ChatNotFound, match="no saved chat 'theirs'"):
            action()
    assert store.get("theirs", user="bob").count == 1
    assert store.find("nobody", user="alice") is None


def test_rename_delete_and_bad_ids(tmp_path):
    store = Chats(tmp_path)
    store.add("c1", "  A   question\nover two lines  ", RECORD)
    assert store.get("c1").title == "A question over two lines"
    assert store.rename("c1", "Aluminium talks").title == "Aluminium talks"
    with pytest.raises(rag.ConfigError, match="cannot be empty"):
        store.rename("c1", "   ")
    with pytest.raises(rag.ConfigError, match=r"chat id '\.\./x' is not valid"):
        store.get("../x")
    store.delete("c1")
    assert store.list() == []
    with pytest.raises(rag.ChatNotFound):
        store.get("c1")


def test_a_turn_is_written_whole_or_not_at_all(tmp_path):
    store = Chats(tmp_path)
    store.add("c1", "first", RECORD)
    with pytest.raises(TypeError):
        store.add("c1", "second", {"answer": object()})  # not JSON: nothing of it is kept
    with pytest.raises(TypeError):
        store.add("c2", "a new chat's first", {"answer": object()})
    db = sqlite3.connect(tmp_path / CHATS)
    assert db.execute("SELECT chat_id, n, question FROM turns").fetchall() == [("c1", 1, "first")]
    assert db.execute("SELECT id FROM chats").fetchall() == [("c1",)]


def test_markdown_export_line_by_line(tmp_path):
    store = Chats(tmp_path)
    store.add("c1", "How much aluminum could Russia sell?", RECORD)
    chat = store.get("c1")
    lines = markdown(chat).splitlines()
    assert lines == [
        "# How much aluminum could Russia sell?",
        "",
        f"Saved chat `c1`, started {chat.to_dict()['created']}.",
        "",
        "## 1. How much aluminum could Russia sell?",
        "",
        "Russia could sell about 2 million tons of aluminum [1].",
        "",
        "Sources:",
        "",
        "[1] Russia offers rare earths — Example News, 2025-02-25 <https://example.org/a1> (cited)",
        "[2] a2",
    ]
    data = chat.to_dict()
    assert data["id"] == "c1" and data["count"] == 1
    assert data["turns"][0]["question"] == "How much aluminum could Russia sell?"
    assert data["turns"][0]["sources"] == RECORD["sources"]


# -- follow-ups ---------------------------------------------------------------------------

CONVERSATION = [
    "What did Putin say about rare earth metals?",
    "Putin said Russia has much more of such resources than Ukraine [1].",
]


def test_a_rewrite_that_makes_a_claim_is_not_searched():
    question = "And what did Kyiv ask for?"
    # The rewrite the issue saw: a statement the model made up.
    made_up = "Kyiv asked for information about rare earth metals."
    assert followup.check(made_up, question, CONVERSATION) == "a claim, not a question"
    assert followup.check("What did Kyiv ask for about rare earth metals?", question, CONVERSATION) == ""
    assert followup.check("What did Moscow ask for?", question, CONVERSATION).startswith("drops kyiv")
    assert followup.check("What did Kyiv ask the IMF for?", question, CONVERSATION) == "adds imf"
    assert followup.check("", question, CONVERSATION) == "empty"
    # A preposition opens a question only before a question word.
    assert followup.check("At the Battle of Kyiv.", question, CONVERSATION) == "a claim, not a question"
    assert followup.check("And what did Kyiv ask for", question, CONVERSATION) == ""
    assert (
        followup.with_subject(question, [CONVERSATION[0]])
        == "And what did Kyiv ask for? (Putin rare earth metals)"
    )
    # The subject reaches back past a follow-up that has too little of its own.
    assert followup.subject(["How much will the river tram line cost?", "How many stops?"], "Why?") == (
        "stops river tram line cost"
    )


class ScriptedGenerator:
    """The model as a script: rewrites get `rewrite`, answers `answer`; every prompt kept."""

    n_ctx = 4096

    def __init__(self, rewrite: str, answer: Sequence[str] = ("Russia could sell ", "2 million tons [1].")):
        self.rewrite = rewrite
        self.answer = tuple(answer)
        self.prompts: list[Sequence[dict[str, str]]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def format(self, messages: Sequence[dict[str, str]]) -> Prompt:
        self.prompts.append(messages)
        return Prompt(
            tokens=range(sum(len(m["content"].split()) + 4 for m in messages)),
            stop=[],
            messages=tuple(messages),
        )

    def stream(self, prompt: Prompt, *, max_tokens: int, temperature: float, seed: int) -> Iterator[str]:
        if "Last question:" in prompt.messages[-1]["content"]:
            yield self.rewrite
        else:
            yield from self.answer


def scripted_rag(index: Path, generator: ScriptedGenerator) -> rag.RAG:
    r = rag.RAG(rag.Settings(index=index), embedder=FakeEmbedder(), generator=generator)
    return r


def test_a_saved_chat_goes_on_after_a_restart(tmp_path):
    index = tmp_path / "index"
    first = scripted_rag(index, ScriptedGenerator("unused"))
    first.ingest([SAMPLE])
    session = first.chat()
    answer = session.ask("How much aluminum could Russia sell to the United States?")
    assert "2 million" in answer.answer
    chat_id = session.id
    first.close()

    # A new process, as after a restart: the same id brings the conversation back.
    gen = ScriptedGenerator("Kyiv asked for information about rare earth metals.")
    again = scripted_rag(index, gen)
    resumed = again.chat(chat_id)
    assert [m["role"] for m in resumed.history] == ["user", "assistant"]
    stream = resumed.stream("And what did Kyiv ask for?")
    for _ in stream:
        pass
    # The model's claim is refused as a search; the follow-up goes with the earlier subject.
    assert stream.follow_up.how == "subject"
    assert stream.follow_up.rejected == "a claim, not a question"
    assert stream.query.startswith("And what did Kyiv ask for? (")
    assert "aluminum" in stream.query
    rewrite_prompt = next(p for p in gen.prompts if "Last question:" in p[-1]["content"])
    assert "How much aluminum could Russia sell" in rewrite_prompt[-1]["content"]

    saved = again.chats.get(chat_id)
    assert [t.question for t in saved.turns] == [
        "How much aluminum could Russia sell to the United States?",
        "And what did Kyiv ask for?",
    ]
    assert saved.turns[1].record["query"] == stream.query
    assert saved.turns[1].record["timings"]["total_ms"] > 0

    # A good rewrite is searched as written; `none` searches the follow-up alone.
    rewrite = "What did Kyiv ask for from Russia and the United States?"
    s = scripted_rag(index, ScriptedGenerator(rewrite)).chat(chat_id).stream("And what did Kyiv ask for?")
    assert (s.follow_up.how, s.query) == ("rewrite", rewrite)
    alone = rag.RAG(rag.Settings(index=index, rewrite="none"), embedder=FakeEmbedder(), generator=gen)
    assert alone.chat(chat_id).stream("And what did Kyiv ask for?").query == "And what did Kyiv ask for?"
    # Unsaved sessions leave no trace.
    before = again.chats.get(chat_id).count
    again.chat(save=False).ask("Who is Kirill Dmitriev?")
    assert again.chats.get(chat_id).count == before and len(again.chats.list()) == 1


def test_rag_chats_commands(tmp_path):
    index = tmp_path / "index"
    Chats(index).add("c1", "How much aluminum could Russia sell?", RECORD)
    Chats(index).add("c2", "Another question", RECORD, user="bob")
    runner = CliRunner()

    listed = runner.invoke(cli, ["chats", "list", "--index", str(index)])
    assert listed.exit_code == 0, listed.output
    assert "c1" in listed.output and "1 turns" in listed.output and "c2" not in listed.output
    as_json = runner.invoke(cli, ["chats", "list", "--index", str(index), "--user", "bob", "--json"])
    assert json.loads(as_json.output)["id"] == "c2"

    shown = runner.invoke(cli, ["chats", "show", "c1", "--index", str(index)])
    assert shown.output == markdown(Chats(index).get("c1"))
    out = tmp_path / "chat.json"
    exported = runner.invoke(
        cli, ["chats", "export", "c1", "--format", "json", "-o", str(out), "--index", str(index)]
    )
    assert exported.exit_code == 0, exported.output
    assert json.loads(out.read_text())["turns"][0]["answer"] == RECORD["answer"]

    renamed = runner.invoke(cli, ["chats", "rename", "c1", "Aluminium", "--index", str(index)])
    assert "c1  Aluminium" in renamed.output
    missing = runner.invoke(cli, ["chats", "show", "nope", "--index", str(index)])
    assert (
        missing.exit_code == 1
        and "no saved chat 'nope'" in missing.output
        and "rag chats list" in missing.output
    )
    deleted = runner.invoke(cli, ["chats", "delete", "c1", "--index", str(index)])
    assert deleted.exit_code == 0 and Chats(index).list() == []


# -- the API, two users -------------------------------------------------------------------


def _ask(url: str, auth: Any, question: str, conversation: str) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": question}], "conversation": conversation}
    return httpx.post(url + "v1/chat/completions", json=body, auth=auth, timeout=60)


def test_api_saves_conversations_and_keeps_users_apart(tmp_path):
    index = tmp_path / "index"
    r = scripted_rag(index, ScriptedGenerator("Kyiv asked for security guarantees."))
    r.ingest([SAMPLE])
    alice, bob = ("alice", "wonder-1"), ("bob", "builder-2")
    demo, url = launch(r, port=None, auth=[alice, bob], ui=False)
    try:
        first = _ask(url, alice, "How much aluminum could Russia sell to the United States?", "talks")
        assert first.status_code == 200, first.text
        assert first.json()["conversation"] == "talks"
        follow = _ask(url, alice, "And what did Kyiv ask for?", "talks")
        assert follow.status_code == 200
        # The stored turn was the conversation: the rewrite (a claim) was refused for it.
        assert follow.json()["query"].startswith("And what did Kyiv ask for? (")

        listed = httpx.get(url + "v1/chats", auth=alice).json()["data"]
        assert [(c["id"], c["count"]) for c in listed] == [("talks", 2)]
        assert httpx.get(url + "v1/chats", auth=bob).json()["data"] == []
        for method in ("GET", "DELETE"):
            resp = httpx.request(method, url + "v1/chats/talks", auth=bob)
            assert resp.status_code == 404 and resp.json()["error"]["code"] == "chat_not_found"
        assert _ask(url, bob, "Who is Kirill Dmitriev?", "talks").status_code == 404

        whole = httpx.get(url + "v1/chats/talks", auth=alice).json()
        assert [t["question"] for t in whole["turns"]] == [
            "How much aluminum could Russia sell to the United States?",
            "And what did Kyiv ask for?",
        ]
        md = httpx.get(url + "v1/chats/talks", params={"format": "markdown"}, auth=alice)
        assert md.headers["content-type"].startswith("text/markdown")
        assert md.text == markdown(r.chats.get("talks", user="alice"))
        renamed = httpx.patch(url + "v1/chats/talks", json={"title": "Kyiv"}, auth=alice)
        assert renamed.json()["title"] == "Kyiv"
        bad = httpx.get(url + "v1/chats/..%2Fx", auth=alice)
        assert bad.status_code == 404
        assert httpx.delete(url + "v1/chats/talks", auth=alice).json()["deleted"] is True
        assert httpx.get(url + "v1/chats", auth=alice).json()["data"] == []
    finally:
        demo.close()
