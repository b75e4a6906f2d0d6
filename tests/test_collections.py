"""Collections (`rag.collections`): named indexes under one root, each with its own articles
and chats, that never mix. The folder layout, the pipeline, the CLI, the API and the UI."""

from __future__ import annotations

import gc
import json
import re
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner

import rag
from rag import collections as K
from rag.cli import cli
from rag.pipeline import EMPTY_COLLECTION
from ui.serving import launch

from .conftest import SAMPLE, FakeEmbedder
from .test_api import QUESTION, CannedGenerator, fake_rag
from .test_ui import answer_of

CHESS = (
    "# Ingrid Berg wins the Tromsø chess open\n\n"
    "Ingrid Berg, a 19-year-old from Bergen, won the Tromsø chess open on Sunday with 8 points "
    "out of 9. She beat the top seed, Magnus Lie, in the last round. The tournament drew 212 "
    "players from 31 countries, the organisers said.\n"
)
CHESS_QUESTION = "Who won the Tromsø chess open?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def chess(tmp_path) -> Path:
    path = tmp_path / "chess.md"
    path.write_text(CHESS, encoding="utf-8")
    return path


def two(index: Path, chess: Path) -> tuple[rag.RAG, rag.RAG]:
    """The sample article in the default collection, the chess one in `hobby`."""
    r = fake_rag(index)
    hobby = r.create_collection("hobby")
    hobby.ingest([chess])
    return r, hobby


# -- the folders --------------------------------------------------------------------------------


def test_names_are_checked_and_the_default_is_the_root_itself(tmp_path):
    root = tmp_path / "index"
    assert K.names(root) == ["default"] and K.exists(root, "default")
    assert K.folder(root, "default") == root
    assert K.folder(root, "work") == root / "collections" / "work"
    for bad in ("", "Work", "../up", "a/b", "-x", "x" * 49, "with space"):
        with pytest.raises(rag.ConfigError, match=re.escape(repr(bad))):
            K.check_name(bad)
    with pytest.raises(rag.ConfigError, match="collection name 'Work'"):
        rag.Settings(index=root, collection="Work")

    K.create(root, "work")
    K.create(root, "archive")
    assert K.names(root) == ["default", "archive", "work"]
    with pytest.raises(rag.ConfigError, match="'work' already exists"):
        K.create(root, "work")
    with pytest.raises(rag.ConfigError, match="'default' already exists"):
        K.create(root, "default")
    with pytest.raises(rag.ConfigError, match="cannot be deleted"):
        K.delete(root, "default")
    err = K.missing(root, "nope")
    assert isinstance(err, rag.CollectionNotFound)
    assert "no collection 'nope'" in str(err) and "default, archive, work" in str(err)
    assert "rag collections create nope" in str(err)
    K.delete(root, "work")
    assert K.names(root) == ["default", "archive"] and not (root / "collections" / "work").exists()
    with pytest.raises(rag.CollectionNotFound):
        K.delete(root, "work")


def test_an_index_built_before_collections_is_the_default_one(tmp_path):
    index = tmp_path / "index"
    r = fake_rag(index)  # written into the root, as every index before collections was
    (listed,) = r.collections()
    assert (listed.name, listed.articles, Path(listed.path)) == ("default", 1, index)
    assert listed.chunks == r.stats()["chunks"] > 0
    assert r.collection() is r and r.collection("default") is r


# -- the pipeline --------------------------------------------------------------------------------


def test_collections_keep_their_articles_and_chats_apart(tmp_path, chess):
    index = tmp_path / "index"
    r, hobby = two(index, chess)
    assert hobby.settings.folder == index / "collections" / "hobby"
    assert [a.title for a in r.articles()] == ["russia-us-rare-earths"]
    assert [a.title for a in hobby.articles()] == ["Ingrid Berg wins the Tromsø chess open"]
    # One family: the models and the gate are the default collection's.
    assert r.collection("hobby") is hobby and hobby.collection("default") is r
    assert hobby.embedder is r.embedder and hobby.generator is r.generator and hobby.gate is r.gate
    assert {c.name: c.articles for c in r.collections()} == {"default": 1, "hobby": 1}

    mine = hobby.ask(CHESS_QUESTION)
    assert mine.sources and {s.title for s in mine.sources} == {"Ingrid Berg wins the Tromsø chess open"}
    theirs = r.ask(CHESS_QUESTION)
    assert {s.title for s in theirs.sources} <= {"russia-us-rare-earths"}

    hobby.chat().ask(CHESS_QUESTION)
    assert len(hobby.chats.list()) == 1 and r.chats.list() == []
    assert (index / "collections" / "hobby" / "chats.sqlite").is_file()

    with pytest.raises(rag.CollectionNotFound, match="there are: default, hobby"):
        r.collection("nope")
    empty = r.create_collection("empty")
    said = empty.ask(QUESTION)
    assert not said.found and said.answer == EMPTY_COLLECTION.format("empty")

    r.delete_collection("hobby")
    with pytest.raises(rag.CollectionNotFound):
        r.collection("hobby")
    # A RAG still held on the deleted collection says so rather than answering from nothing.
    with pytest.raises(rag.CollectionNotFound, match="no collection 'hobby'"):
        hobby.ask(CHESS_QUESTION)
    assert [a.title for a in r.articles()] == ["russia-us-rare-earths"]


def test_ingest_into_a_new_collection_creates_it(tmp_path, chess):
    index = tmp_path / "index"
    fresh = rag.RAG(rag.Settings(index=index, collection="news"), embedder=FakeEmbedder())
    assert fresh.ingest([chess]).ok
    assert K.names(index) == ["default", "news"]
    assert not (index / "CURRENT").exists()  # the default one is untouched
    assert {c.name: c.articles for c in K.info(index)} == {"default": 0, "news": 1}


def test_a_rag_dropped_is_freed_at_once_and_a_family_keeps_working(tmp_path, chess):
    # Freed by reference counting, not by a garbage collection that may come only at exit.
    gc.disable()
    try:
        r = rag.RAG(rag.Settings(index=tmp_path / "index"), embedder=FakeEmbedder())
        r.ingest([chess])
        assert r.retrieve(CHESS_QUESTION)
        gone = weakref.ref(r)
        del r
        assert gone() is None
    finally:
        gc.enable()
    r, hobby = two(tmp_path / "family", chess)
    assert r.collection() is r and r.collection("default") is r
    assert r.collection("hobby") is hobby and hobby.collection("default") is r
    assert hobby.collection() is hobby and hobby.embedder is r.embedder


def test_what_a_process_still_holds_is_let_go_before_the_interpreter_tears_down(tmp_path, chess):
    """A family of collections is a reference cycle: left to the interpreter's last garbage
    collection, its real embedder and index were freed after the modules they need (a rare
    segfault after `rag eval` had written its report). They go at exit, before that."""
    script = f"""
import atexit
import weakref

held = []
# Registered before rag is imported: it runs after rag's own exit hook.
atexit.register(lambda: print("still held at exit:", sum(ref() is not None for ref in held)))

import rag

r = rag.RAG(rag.Settings(index={str(tmp_path / "index")!r}))
hobby = r.create_collection("hobby")
assert hobby.ingest([{str(chess)!r}]).ok
assert hobby.retrieve({CHESS_QUESTION!r})
held += [weakref.ref(r.embedder), weakref.ref(hobby.snapshot())]
print("held:", sum(ref() is not None for ref in held))
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "held: 2" in p.stdout
    assert "still held at exit: 0" in p.stdout, p.stdout


def test_rag_ask_reads_the_collection_setting(tmp_path, chess, monkeypatch):
    import rag.pipeline

    index = tmp_path / "index"
    r, _ = two(index, chess)
    # The RAG `rag.ask` would make for this root: the fake one, so that no model loads.
    root = rag.Settings.load(index=index)
    monkeypatch.setitem(rag.pipeline._default, root, r)
    monkeypatch.setenv("RAG_COLLECTION", "hobby")
    said = rag.ask(CHESS_QUESTION, index=index)
    assert {s.title for s in said.sources} == {"Ingrid Berg wins the Tromsø chess open"}
    said = rag.ask(QUESTION, index=index, collection="default")
    assert {s.title for s in said.sources} == {"russia-us-rare-earths"}
    with pytest.raises(rag.CollectionNotFound):
        rag.ask(QUESTION, index=index, collection="nope")


# -- the CLI --------------------------------------------------------------------------------------


def test_the_collections_commands(tmp_path, chess):
    index = tmp_path / "index"
    two(index, chess)
    runner = CliRunner()
    at = ["--index", str(index)]

    listed = runner.invoke(cli, ["collections", "list", *at])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].startswith("* default") and "1 articles" in lines[0]
    assert lines[1].startswith("  hobby") and str(index / "collections" / "hobby") in lines[1]
    as_json = runner.invoke(cli, ["collections", "list", *at, "--json"], env={"RAG_COLLECTION": "hobby"})
    assert [json.loads(line)["name"] for line in as_json.output.splitlines()] == ["default", "hobby"]
    marked = runner.invoke(cli, ["collections", "list", *at], env={"RAG_COLLECTION": "hobby"})
    assert marked.output.splitlines()[1].startswith("* hobby")

    made = runner.invoke(cli, ["collections", "create", "work", *at])
    assert made.exit_code == 0 and "rag ingest --collection work" in made.output
    again = runner.invoke(cli, ["collections", "create", "work", *at])
    assert again.exit_code != 0 and "'work' already exists" in again.output
    bad = runner.invoke(cli, ["collections", "create", "My Work", *at])
    assert bad.exit_code != 0 and "collection name 'My Work' is not usable" in bad.output

    # Every command that takes --index takes --collection too.
    articles = runner.invoke(cli, ["list", *at, "--collection", "hobby"])
    assert articles.exit_code == 0 and "Ingrid Berg wins the Tromsø chess open" in articles.output
    assert "russia" not in articles.output
    stats = runner.invoke(cli, ["stats", *at, "--collection", "hobby", "--json"])
    assert json.loads(stats.output)["articles"] == 1
    nope = runner.invoke(cli, ["list", *at, "--collection", "nope"])
    assert nope.exit_code != 0
    assert "no collection 'nope'" in nope.output and "there are: default, hobby, work" in nope.output
    chats = runner.invoke(cli, ["chats", "list", *at, "--collection", "nope"])
    assert chats.exit_code != 0 and "no collection 'nope'" in chats.output

    kept = runner.invoke(cli, ["collections", "delete", "hobby", *at], input="n\n")
    assert kept.exit_code != 0 and K.exists(index, "hobby")
    gone = runner.invoke(cli, ["collections", "delete", "hobby", *at], input="y\n")
    assert gone.exit_code == 0 and "deleted collection hobby" in gone.output
    assert not K.exists(index, "hobby")
    default = runner.invoke(cli, ["collections", "delete", "default", *at, "--yes"])
    assert default.exit_code != 0 and "cannot be deleted" in default.output


# -- the API -------------------------------------------------------------------------------------


def test_the_api_answers_from_the_collection_a_request_names(tmp_path, chess):
    index = tmp_path / "index"
    r, _ = two(index, chess)
    server, url = launch(r, ui=False)
    try:
        models = [m["id"] for m in httpx.get(url + "v1/models").json()["data"]]
        assert models == ["rag", "rag/default", "rag/hobby"]
        assert httpx.get(url + "v1/models/rag/hobby").json()["id"] == "rag/hobby"
        listed = httpx.get(url + "v1/collections").json()["data"]
        assert [(c["name"], c["model"], c["articles"]) for c in listed] == [
            ("default", "rag/default", 1),
            ("hobby", "rag/hobby", 1),
        ]

        c = openai.OpenAI(base_url=url + "v1", api_key="unused", max_retries=0)
        question = [{"role": "user", "content": CHESS_QUESTION}]
        by_model = c.chat.completions.create(model="rag/hobby", messages=question)
        assert by_model.model == "rag/hobby"
        titles = {s["title"] for s in by_model.model_extra["sources"]}
        assert titles == {"Ingrid Berg wins the Tromsø chess open"}
        by_field = httpx.post(url + "v1/chat/completions", json={"messages": question, "collection": "hobby"})
        assert {s["title"] for s in by_field.json()["sources"]} == titles
        default = httpx.post(url + "v1/chat/completions", json={"messages": question}).json()
        assert {s["title"] for s in default["sources"]} <= {"russia-us-rare-earths"}
        found = httpx.post(url + "v1/retrieve", json={"query": "chess", "collection": "hobby"}).json()["data"]
        assert {p["title"] for p in found} == titles

        with pytest.raises(openai.NotFoundError, match="no collection 'nope'"):
            c.chat.completions.create(model="rag/nope", messages=question)
        unknown = httpx.post(url + "v1/retrieve", json={"query": "x", "collection": "nope"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "collection_not_found"
        both = {"messages": question, "model": "rag/hobby", "collection": "default"}
        conflict = httpx.post(url + "v1/chat/completions", json=both)
        assert conflict.status_code == 400 and "name two collections" in conflict.json()["error"]["message"]
        bad = httpx.post(url + "v1/retrieve", json={"query": "x", "collection": "../up"})
        assert bad.status_code == 400

        # A chat is saved in its collection and listed there only.
        saved = {"messages": question, "collection": "hobby", "conversation": "c-hobby"}
        assert httpx.post(url + "v1/chat/completions", json=saved).status_code == 200
        in_hobby = httpx.get(url + "v1/chats", params={"collection": "hobby"}).json()["data"]
        assert [ch["id"] for ch in in_hobby] == ["c-hobby"]
        assert httpx.get(url + "v1/chats").json()["data"] == []
        assert httpx.get(url + "v1/chats/c-hobby").status_code == 404
        assert httpx.get(url + "v1/chats/c-hobby", params={"collection": "hobby"}).status_code == 200

        # The CLI through the server, in a collection.
        runner = CliRunner()
        asked = runner.invoke(
            cli, ["ask", CHESS_QUESTION, "--server", url, "--collection", "hobby", "--json"]
        )
        assert asked.exit_code == 0, asked.output
        out = json.loads(asked.output)
        assert {s["title"] for s in out["sources"]} == titles
    finally:
        server.close()


# -- the real models ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_answers_come_from_the_chosen_collection_only(tmp_path, chess, real_embedder, real_generator):
    """Real embedder, real model: the chess question answered in `hobby` from the chess
    article; asked of the default collection it finds nothing to say. The CLI ingests
    into a collection it makes."""
    index = tmp_path / "index"
    r = rag.RAG(rag.Settings(index=index), embedder=real_embedder, generator=real_generator)
    r.ingest([SAMPLE])
    made = CliRunner().invoke(cli, ["ingest", str(chess), "--index", str(index), "--collection", "hobby"])
    assert made.exit_code == 0, made.output
    assert str(index / "collections" / "hobby") in made.output
    hobby = r.collection("hobby")

    mine = hobby.ask(CHESS_QUESTION)
    assert mine.found and "Ingrid Berg" in mine.answer, mine.answer
    assert {s.title for s in mine.cited_sources} == {"Ingrid Berg wins the Tromsø chess open"}
    theirs = r.ask(CHESS_QUESTION)
    assert not theirs.found and "Ingrid" not in theirs.answer
    aluminium = hobby.ask(QUESTION)
    assert not aluminium.found and all(s.title != "russia-us-rare-earths" for s in aluminium.sources)


@pytest.mark.slow
def test_the_ui_switches_collection_and_everything_follows(tmp_path, chess, real_embedder, real_generator):
    """One browser session picks `hobby`: its library, its answers, its saved chats; another
    session meanwhile still reads the default collection. A collection made in the Library
    tab is chosen at once and empty."""
    from gradio_client import Client

    index = tmp_path / "index"
    r = rag.RAG(rag.Settings(index=index), embedder=real_embedder, generator=real_generator)
    r.ingest([SAMPLE])
    r.create_collection("hobby").ingest([chess])
    demo, url = launch(r, port=free_port())
    try:
        c, other = Client(url, verbose=False), Client(url, verbose=False)
        listed = c.predict(api_name="/collections")
        assert listed["value"] == "default"
        assert listed["choices"] == [["default (1 article)", "default"], ["hobby (1 article)", "hobby"]]
        switched = c.predict("hobby", api_name="/switch_collection")
        header, table = switched[-6], switched[-5]
        assert "in the collection “hobby”" in header
        assert [row[0] for row in table["data"]] == ["Ingrid Berg wins the Tromsø chess open"]
        only_sources, only_articles = switched[-3], switched[-2]
        assert only_sources["value"] == [] and only_articles["value"] == []  # the filters follow
        assert [label.split(" (")[0] for label, _ in only_articles["choices"]] == [
            "Ingrid Berg wins the Tromsø chess open"
        ]
        header, table, *_ = c.predict(api_name="/library")
        assert [row[0] for row in table["data"]] == ["Ingrid Berg wins the Tromsø chess open"]

        chat, _, sources, *_ = c.predict(CHESS_QUESTION, 5, 0.0, 64, api_name="/ask")
        assert "Ingrid Berg" in answer_of(chat)
        assert "Tromsø chess open" in sources and "rare" not in sources.lower()
        assert len(r.collection("hobby").chats.list()) == 1 and r.chats.list() == []

        # The other session was never switched.
        _, table, *_ = other.predict(api_name="/library")
        assert [row[0] for row in table["data"]] == ["russia-us-rare-earths"]

        made = c.predict("trips", api_name="/create_collection")
        assert made[1] == "" and "Created the collection “trips”" in made[2]
        assert K.exists(index, "trips")
        header, table, *_ = c.predict(api_name="/library")
        assert header.startswith("No articles in the collection “trips” yet") and table["data"] == []
        bad = c.predict("Trips!", api_name="/create_collection")
        assert "collection name 'Trips!' is not usable" in bad[2]
    finally:
        demo.close(verbose=False)


def test_a_second_server_sees_a_collection_made_by_the_first(tmp_path, chess):
    """Collections are folders: another process's new one is listed without a restart."""
    index = tmp_path / "index"
    r = fake_rag(index)
    server, url = launch(r, ui=False)
    try:
        assert [m["id"] for m in httpx.get(url + "v1/models").json()["data"]] == ["rag", "rag/default"]
        other = rag.RAG(rag.Settings(index=index, collection="late"), embedder=FakeEmbedder())
        other.ingest([chess])
        assert "rag/late" in [m["id"] for m in httpx.get(url + "v1/models").json()["data"]]
        body = {"messages": [{"role": "user", "content": CHESS_QUESTION}], "model": "rag/late"}
        resp = httpx.post(url + "v1/chat/completions", json=body).json()
        assert {s["title"] for s in resp["sources"]} == {"Ingrid Berg wins the Tromsø chess open"}
        assert isinstance(r.collection("late").generator, CannedGenerator)
    finally:
        server.close()
