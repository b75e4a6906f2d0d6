"""Files outside the app stay outside: symlinks planted in the library's uploads folder or in
Gradio's upload cache are neither served nor written through, and hostile upload names end up
inside the uploads folder."""

from __future__ import annotations

import http.client
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlparse

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import rag
from ui.handlers import keep_uploads
from ui.serving import launch

from .test_api import fake_rag
from .test_ui import free_port

SECRET = "TOP-SECRET-" + secrets.token_hex(8)


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[rag.RAG, str]]:
    r = fake_rag(tmp_path / "index")
    server, url = launch(r, port=free_port())
    yield r, url
    server.close()


@pytest.fixture
def secret(tmp_path) -> Path:
    """A file outside the app that nobody asked it to serve."""
    path = tmp_path / "outside" / "secret.txt"
    path.parent.mkdir()
    path.write_text(SECRET + "\n", encoding="utf-8")
    return path


def get(url: str, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (http.client does no `..` clean-up of its own)."""
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def file_routes(path: Path) -> list[str]:
    """Every spelling of Gradio's file routes for one absolute path."""
    raw, quoted = str(path), quote(str(path), safe="")
    return [
        f"/gradio_api/file={raw}",
        f"/gradio_api/file={quoted}",
        f"/gradio_api/file/{raw.lstrip('/')}",
        f"/file={raw}",
    ]


def upload(url: str, name: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{url}gradio_api/upload", files={"files": (name, data, "text/plain")}, timeout=30)


def test_symlink_in_the_uploads_folder_is_not_served(served, secret):
    r, url = served
    uploads = Path(r.settings.index) / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    (uploads / "leak.txt").symlink_to(secret)
    (uploads / "leakdir").symlink_to(secret.parent, target_is_directory=True)
    for target in (uploads / "leak.txt", uploads / "leakdir" / "secret.txt", secret):
        for route in file_routes(target):
            status, body = get(url, route)
            assert status != 200, (route, status)
            assert SECRET.encode() not in body, route


def test_symlink_in_gradios_upload_cache_is_not_served(served, secret):
    """Gradio serves back the files it stored on upload; a link planted beside them, or in
    place of one, resolves outside its folder and is refused."""
    _, url = served
    resp = upload(url, "note.txt", b"an honest upload\n")
    assert resp.status_code == 200, resp.text
    stored = Path(resp.json()[0])
    # The route works: what Gradio stored itself comes back (so the refusals below mean it).
    status, body = get(url, f"/gradio_api/file={stored}")
    assert status == 200 and body == b"an honest upload\n"
    beside = stored.parent / "beside.txt"
    beside.symlink_to(secret)
    folder = stored.parent / "folder"
    folder.symlink_to(secret.parent, target_is_directory=True)
    try:
        for target in (beside, folder / "secret.txt"):
            for route in file_routes(target):
                status, body = get(url, route)
                assert status != 200, (route, status)
                assert SECRET.encode() not in body, route
        stored.unlink()
        stored.symlink_to(secret)  # the stored file itself swapped for a link
        status, body = get(url, f"/gradio_api/file={stored}")
        assert status != 200 and SECRET.encode() not in body
    finally:
        for link in (beside, folder, stored):
            link.unlink(missing_ok=True)


def test_upload_over_a_planted_symlink_does_not_write_through_it(served, secret, tmp_path):
    """An upload whose name is that of a link in the uploads folder replaces the link; the
    file the link pointed at is left as it was."""
    r, url = served
    uploads = Path(r.settings.index) / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    (uploads / "notes.txt").symlink_to(secret)
    article = tmp_path / "mine" / "notes.txt"
    article.parent.mkdir()
    article.write_text("Harbour cranes arrive in Valdora. Four of them, the port said.\n", encoding="utf-8")
    client = Client(url, verbose=False)
    out = client.predict([handle_file(str(article))], api_name="/add_articles")
    report, table = out[1], out[3]  # (files, report, header, table, ...)
    assert report.startswith("✓ 1 added"), report
    assert secret.read_text(encoding="utf-8") == SECRET + "\n"  # untouched
    kept = uploads / "notes.txt"
    assert not kept.is_symlink() and kept.read_text(encoding="utf-8") == article.read_text(encoding="utf-8")
    assert "notes" in {row[0] for row in table["data"]}


HOSTILE = [
    "../../escape-{tag}.txt",
    "../../../../../../tmp/escape-{tag}.txt",
    "/etc/escape-{tag}.txt",
    "a/../../escape-{tag}.txt",
    "..\\..\\escape-{tag}.txt",
    "..",
    ".",
    "...txt",
    " .escape-{tag}.txt",
    "bell\x07-{tag}.txt",
]


def test_hostile_upload_names_stay_inside_the_uploads_folder(served, tmp_path):
    r, url = served
    tag = secrets.token_hex(4)
    uploads = Path(r.settings.index) / "uploads"
    client = Client(url, verbose=False)
    added = 0
    for pattern in HOSTILE:
        name = pattern.format(tag=tag)
        resp = upload(url, name, f"Article sent as {name!r}: the harbour opens in May.\n".encode())
        if resp.status_code != 200:
            assert resp.status_code == 400, (name, resp.status_code)
            continue
        stored = Path(resp.json()[0])
        assert "/" not in stored.name and stored.name not in (".", ".."), (name, stored)
        # Through the chat's own upload handler, which copies it into the library.
        try:
            report = client.predict([handle_file(str(stored))], api_name="/add_articles")[1]
        except AppError as e:
            # A name left without an article extension is refused before anything is copied.
            assert "Invalid file type" in str(e), (name, e)
            continue
        # Added, or "updated" when its cleaned name collides with an earlier one (the same
        # name is the same article, by design), or refused in one line with its reason.
        assert "\n" not in report and report.startswith(("✓ ", "✗ ")), (name, report)
        added += report.startswith("✓ ")
    assert added >= 6  # the names that keep a .txt ending are indexed, under a clean name
    kept = list(uploads.iterdir())
    assert kept and all(p.parent == uploads and p.is_file() and not p.is_symlink() for p in kept), kept
    assert not [p for p in uploads.iterdir() if p.name.startswith(".upload")]  # no half-copies left
    # Nothing landed anywhere a `..` could have taken it.
    for place in (Path("/"), Path("/tmp"), Path("/etc"), tmp_path, tmp_path.parent, Path(r.settings.index)):
        assert not list(place.glob(f"*escape-{tag}*")), place
    index_files = [p for p in Path(r.settings.index).rglob("*") if p.parent != uploads]
    assert not [p for p in index_files if f"escape-{tag}" in p.name]


def test_keep_uploads_replaces_links_and_keeps_names_inside(tmp_path, secret):
    """The copy into the library, on its own: a link at the target name is replaced, never
    followed; names that are only dots or odd characters stay inside the folder."""
    folder = tmp_path / "uploads"
    folder.mkdir()
    (folder / "report.md").symlink_to(secret)
    # A link to a file we own: were the copy to follow it, the test must not damage the machine.
    other = tmp_path / "outside" / "other.txt"
    other.write_text("other\n", encoding="utf-8")
    os.symlink(other, folder / "passwd.txt")
    sources = tmp_path / "from-gradio"
    sources.mkdir()
    names = ["report.md", "passwd.txt", "...txt", " .hidden.txt", "a\x07b.txt", "ünïcode – name.md"]
    files = []
    for i, name in enumerate(names):
        sub = sources / str(i)
        sub.mkdir()
        (sub / name).write_text(f"upload {i}\n", encoding="utf-8")
        files.append(str(sub / name))
    kept = keep_uploads(files, folder)
    assert [p.parent for p in kept] == [folder] * len(names)
    assert all(p.is_file() and not p.is_symlink() for p in kept)
    assert [p.read_text(encoding="utf-8") for p in kept] == [f"upload {i}\n" for i in range(len(names))]
    assert secret.read_text(encoding="utf-8") == SECRET + "\n"
    assert other.read_text(encoding="utf-8") == "other\n"
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in kept)
