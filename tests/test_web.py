"""Articles from the web, feeds, folders kept in sync, and syndicated copies collapsed: all
against a real HTTP server on 127.0.0.1 (tests/webserver.py), started and stopped here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rag
from rag import dedup
from rag.store import Snapshot
from rag.web import looks_like_feed

from . import webserver
from .conftest import ROOT

RAG_BIN = str(Path(sys.executable).with_name("rag"))


def make_rag(tmp_path, embedder, **kw) -> rag.RAG:
    return rag.RAG(rag.Settings(index=tmp_path / "index", **kw), embedder=embedder)


def test_pages_by_url_canonical_identity_metadata_and_one_line_errors(tmp_path, fake_embedder):
    r = make_rag(tmp_path, fake_embedder, max_file_mb=0.5)
    with webserver.serve() as site:
        b = site.base
        bad = [
            f"{b}/missing",
            f"{b}/photo.png",
            f"{b}/huge.html",
            f"{b}/empty.html",
            f"{b}/loop",
            "ftp://127.0.0.1/x",
        ]
        errors: list[rag.InputError] = []
        report = r.ingest([f"{b}/old-link", f"{b}/story", *bad], on_error=errors.append)
    # The redirect's article is known by its final address, the page with a canonical link by that.
    assert sorted(report.added) == [f"{b}/news/comet.html", f"{b}/news/lynx.html"]
    info, text = r.article(f"{b}/news/lynx.html")
    assert info.title.startswith("Lynx return to the northern forest")
    assert (info.date, info.author, info.source) == ("2026-03-02", "Mara Lind", "Example Gazette")
    assert "fourteen Eurasian lynx" in text
    # Boilerplate (navigation, footer) is not article text.
    assert "Copyright" not in text and "Sport" not in text and "newsletter" not in text
    # Every bad input failed alone, named, on one line, with what to do; the rest went in.
    assert [e.path for e in errors] == bad
    reasons = dict(report.failed)
    assert "HTTP 404" in reasons[f"{b}/missing"]
    assert "image/png" in reasons[f"{b}/photo.png"]
    assert "size limit of 0.5 MB" in reasons[f"{b}/huge.html"]
    assert "no article text" in reasons[f"{b}/empty.html"]
    assert "redirects" in reasons[f"{b}/loop"]
    assert "only http:// and https://" in reasons["ftp://127.0.0.1/x"]
    assert all("\n" not in str(e) for e in errors)
    # It said who was asking.
    assert all(h.get("User-Agent", "").startswith("rag-articles/") for _, _, h in site.requests)


def test_feeds_take_in_entries_then_only_new_ones_conditionally(tmp_path, fake_embedder):
    r = make_rag(tmp_path, fake_embedder)
    with webserver.serve() as site:
        b = site.base
        first = r.ingest([f"{b}/feed.rss", f"{b}/wire.atom"])
        # RSS items carry teasers: their pages were fetched; the Atom entry carries its full text.
        assert sorted(first.added) == [f"{b}/news/bridge.html", f"{b}/news/lynx.html", f"{b}/wire/comet"]
        lynx, _ = r.article(f"{b}/news/lynx.html")
        # The entry's date and the feed's title stand for the page's own.
        assert (lynx.date, lynx.source, lynx.author) == ("2026-05-28", "Gazette News", "Mara Lind")
        comet, text = r.article(f"{b}/wire/comet")
        assert (comet.source, comet.author, comet.date) == ("Wire Service", "Ines Duarte", "2026-05-20")
        assert "backyard telescope" in text
        pages_fetched = sum(p.startswith("/news/") for _, p, _ in site.requests)

        site.version = 2
        second = r.ingest([f"{b}/feed.rss", f"{b}/wire.atom"])
        # Only the new items: the festival page (RSS) and the wire's copy of it (Atom).
        assert second.added == (f"{b}/news/festival.html",)
        assert second.copies == ((f"{b}/wire/festival", f"{b}/news/festival.html"),)
        assert sum(p.startswith("/news/") for _, p, _ in site.requests) == pages_fetched + 1

        generation = r.stats()["generation"]
        third = r.ingest([f"{b}/wire.atom"])
        # The server's ETag came back; it answered 304 and nothing was committed.
        assert site.requests[-1][2].get("If-None-Match") == '"wire-v2"'
        assert not third.changed and r.stats()["generation"] == generation


def test_a_feed_file_on_disk_is_detected_and_read(tmp_path, fake_embedder):
    with webserver.serve() as site:
        feed = tmp_path / "wire.xml"
        feed.write_bytes(webserver.atom(site.base, ["comet", "bridge"]))
        assert looks_like_feed(feed.read_bytes())
        r = make_rag(tmp_path, fake_embedder)
        report = r.ingest([feed])
        assert sorted(report.added) == [f"{site.base}/wire/bridge", f"{site.base}/wire/comet"]
        assert not site.requests  # full texts in the feed: nothing fetched
        assert r.ingest([feed]).added == ()


def test_prune_removes_deleted_files_updates_edited_ones_and_leaves_others(tmp_path, fake_embedder):
    r = make_rag(tmp_path, fake_embedder)
    folder, other = tmp_path / "articles", tmp_path / "elsewhere"
    folder.mkdir()
    other.mkdir()
    for slug in ("lynx", "bridge", "comet"):
        (folder / f"{slug}.txt").write_text(webserver.STORIES[slug][3])
    (other / "festival.txt").write_text(webserver.STORIES["festival"][3])
    r.ingest([folder, other])
    assert len(r.articles()) == 4

    (folder / "bridge.txt").unlink()
    (folder / "comet.txt").write_text(
        webserver.STORIES["comet"][3].replace("retired teacher", "retired nurse")
    )
    (folder / "notes.md").write_text("# Notes\n\nThe reserve opens to visitors in June.")
    report = r.ingest([folder], prune=True)
    assert report.removed == (str((folder / "bridge.txt").resolve()),)
    assert report.updated == (str((folder / "comet.txt").resolve()),)
    assert report.added == (str((folder / "notes.md").resolve()),)
    ids = {a.id for a in r.articles()}
    # The other folder was not named: its article stays, though it is not under `folder`.
    assert str((other / "festival.txt").resolve()) in ids
    assert len(ids) == 4
    # Gone from answers, not only from the list.
    assert not any("cables" in s.text for s in r.retrieve("harbour bridge cables", k=5))
    # Without --prune nothing is removed.
    (folder / "lynx.txt").unlink()
    assert r.ingest([folder]).removed == ()


def _outlets() -> list[dict[str, str]]:
    title, _, _, text = webserver.STORIES["bridge"]
    edits = [
        ("Gazette", title, text),
        (
            "Herald",
            "Bridge to shut for six weeks",
            text.replace("six weeks from May", "six weeks starting in May"),
        ),
        (
            "Courier",
            "Cable repairs close the harbour bridge",
            text.replace("The city council", "Officials").rsplit(" Buses", 1)[0]
            + " Buses will use a temporary lane on the lower deck.",
        ),
    ]
    records = [
        {
            "id": f"{o.lower()}-bridge",
            "title": t,
            "text": body,
            "source": o,
            "url": f"https://{o.lower()}.example/bridge",
        }
        for o, t, body in edits
    ]
    # The same event, reported apart: must not merge.
    records.append(
        {
            "id": "post-bridge",
            "title": "Drivers face detours as harbour bridge work begins",
            "source": "Post",
            "text": "Commuters who drive across the harbour will need to plan for longer journeys this "
            "spring. The bridge shuts in May for repair work on its cables, and the detour through "
            "the old town adds about twenty minutes at rush hour, according to the traffic office. "
            "Cyclists and pedestrians can still cross on the footpath, which stays open throughout, "
            "and shops near the bridge worry about losing passing trade during the closure.",
        }
    )
    return records


def test_syndicated_copies_collapse_to_one_and_a_copy_takes_over_when_it_goes(tmp_path, fake_embedder):
    dump = tmp_path / "wire.jsonl"
    dump.write_text("\n".join(json.dumps(r) for r in _outlets()))
    r = make_rag(tmp_path, fake_embedder)
    report = r.ingest([dump])
    assert sorted(report.added) == ["gazette-bridge", "post-bridge"]
    assert sorted(report.copies) == [
        ("courier-bridge", "gazette-bridge"),
        ("herald-bridge", "gazette-bridge"),
    ]
    (gazette,) = [a for a in r.articles() if a.id == "gazette-bridge"]
    assert gazette.copies == 2

    sources = r.retrieve("Why will the harbour bridge close?", k=5)
    assert len({s.article_id for s in sources}) == len({s.article_id for s in sources})
    assert {s.article_id for s in sources} <= {"gazette-bridge", "post-bridge"}
    top = next(s for s in sources if s.article_id == "gazette-bridge")
    assert [c.source for c in top.copies] == ["Courier", "Herald"] or [c.source for c in top.copies] == [
        "Herald",
        "Courier",
    ]
    assert {c["source"] for c in top.to_dict()["copies"]} == {"Courier", "Herald"}

    # Re-ingesting the same dump changes nothing; removing the original promotes a copy.
    assert not r.ingest([dump]).changed
    assert r.remove(["gazette-bridge"]) == []
    listed = {a.id: a for a in r.articles()}
    assert "gazette-bridge" not in listed
    (heir,) = [a for a in listed.values() if a.id in ("herald-bridge", "courier-bridge")]
    assert heir.copies == 1
    assert any(s.article_id == heir.id for s in r.retrieve("harbour bridge cables repairs", k=3))
    # A copy can be removed by its id too.
    other = ({"herald-bridge", "courier-bridge"} - {heir.id}).pop()
    assert r.remove([other]) == []
    assert [a.copies for a in r.articles() if a.id == heir.id] == [0]


def test_signatures_separate_copies_from_stories_written_apart():
    records = _outlets()
    sigs = [dedup.signature(rec["text"]) for rec in records]
    gazette, herald, courier, post = sigs
    assert dedup.similarity(gazette, herald) >= dedup.THRESHOLD
    assert dedup.similarity(gazette, courier) >= dedup.THRESHOLD
    assert dedup.similarity(gazette, post) < 0.1
    assert dedup.signature("too short to judge") is None


@pytest.mark.slow
def test_rag_ingest_url_and_rag_watch_two_passes(tmp_path):
    """The real command line, embedder included: a URL batch with one bad address, then
    `rag watch` over a feed and a folder for two passes, the feed and the folder changing
    between them."""
    env = {**os.environ, "RAG_INDEX": str(tmp_path / "index")}
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("Reminder: ask the rangers about the camera traps.")
    (folder / "comet.txt").write_text(webserver.STORIES["comet"][3])
    with webserver.serve() as site:
        b = site.base
        done = subprocess.run(
            [RAG_BIN, "ingest", f"{b}/news/bridge.html", f"{b}/missing"],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
        )
        assert done.returncode == 1, done.stderr
        assert f"error: {b}/missing: the server answered HTTP 404" in done.stderr
        assert done.stdout.startswith("1 added")

        site.bump_after_feed = True
        watch = subprocess.Popen(
            [RAG_BIN, "watch", f"{b}/feed.rss", str(folder), "--every", "2s", "--passes", "2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            first = watch.stdout.readline()
            # The feed's lynx page and the folder's two files; the bridge page was in already,
            # and now carries the feed's date and title as its source.
            assert "pass 1: 3 added, 1 updated, 0 removed" in first, first
            (folder / "comet.txt").unlink()
            out, err = watch.communicate(timeout=300)
        finally:
            watch.kill()
        assert watch.returncode == 0, err
        assert "pass 2: 1 added, 0 updated, 1 removed" in out, out + err
        assert f"removed: {(folder / 'comet.txt').resolve()}" in err
    snap = Snapshot.open(tmp_path / "index")
    ids = {a.id for a in snap.articles()}
    snap.close()
    assert f"{b}/news/festival.html" in ids and str((folder / "comet.txt").resolve()) not in ids
    assert len(ids) == 4  # bridge (by URL), the lynx page, notes, festival

    # The same sync from `rag ingest --prune`, which names what it removed.
    (folder / "notes.txt").unlink()
    (folder / "todo.txt").write_text("Call the harbour office about the ferry timetable.")
    command = [RAG_BIN, "ingest", str(folder), "--prune"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert f"removed: {(folder / 'notes.txt').resolve()}" in done.stderr
    assert done.stdout.startswith("1 added, 0 updated, 0 unchanged, 1 removed, 0 failed"), done.stdout


def test_watcher_interval_and_errors(tmp_path, fake_embedder):
    from rag.watch import Watcher, parse_interval

    assert parse_interval("15m") == 900 and parse_interval("30s") == 30 and parse_interval("2") == 2
    with pytest.raises(rag.ConfigError, match="'soon'"):
        parse_interval("soon")
    r = make_rag(tmp_path, fake_embedder)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_text(webserver.STORIES["lynx"][3])
    passes: list[rag.IngestReport] = []
    w = Watcher(r, [str(folder)], every=0.05, on_pass=passes.append).start()
    deadline = time.monotonic() + 30
    while len(passes) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    (folder / "a.txt").unlink()
    while not any(p.removed for p in passes) and time.monotonic() < deadline:
        time.sleep(0.02)
    w.stop()
    assert passes[0].added and any(p.removed for p in passes)
    assert r.articles() == []


@pytest.mark.slow
def test_rag_serve_watch_answers_from_what_the_folder_holds_now(tmp_path):
    """`rag serve --watch DIR`: a file added to the folder is searched, a file removed is
    gone, without a restart."""
    import httpx

    from .test_api import free_port, rag_serve, stop_server, wait_until_up

    folder = tmp_path / "watched"
    folder.mkdir()
    (folder / "lynx.txt").write_text(webserver.STORIES["lynx"][3])
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = rag_serve(
        "--no-ui",
        "--index",
        str(tmp_path / "index"),
        "--port",
        str(port),
        "--watch",
        str(folder),
        "--every",
        "1s",
    )

    def found(query: str) -> set[str]:
        resp = httpx.post(url + "v1/retrieve", json={"query": query, "k": 3}, timeout=30)
        assert resp.status_code == 200, resp.text
        return {Path(s["article_id"]).name for s in resp.json()["data"]}

    def eventually(query: str, want: bool, name: str) -> None:
        deadline = time.monotonic() + 120
        while (name in found(query)) != want:
            assert time.monotonic() < deadline, f"{name} {'never appeared' if want else 'never went'}"
            time.sleep(0.5)

    try:
        wait_until_up(proc, url, 180)
        eventually("lynx kittens in the reserve", True, "lynx.txt")
        (folder / "bridge.txt").write_text(webserver.STORIES["bridge"][3])
        eventually("harbour bridge cable repairs", True, "bridge.txt")
        (folder / "lynx.txt").unlink()
        eventually("lynx kittens in the reserve", False, "lynx.txt")
    finally:
        err = stop_server(proc)
    assert "watch pass" in err and "1 removed" in err
