"""Every input format, and every kind of bad input, through the loaders."""

from __future__ import annotations

import json

import pytest

from rag.errors import ConfigError, InputError
from rag.loaders import iter_articles, parse_field_overrides
from rag.types import Article

from .conftest import shared
from .helpers import make_pdf


def load(*paths, **kw):
    items = list(iter_articles(paths, **kw))
    return [a for a in items if isinstance(a, Article)], [e for e in items if isinstance(e, InputError)]


def test_txt_and_md(tmp_path):
    (tmp_path / "a.txt").write_text("Plain text article.\nSecond line.")
    (tmp_path / "b.md").write_text("# Market report\n\nShares rose 3% on Friday.")
    arts, errs = load(tmp_path)
    assert not errs
    by_title = {a.title: a for a in arts}
    assert by_title["Market report"].text.startswith("# Market report")
    assert by_title["a"].text == "Plain text article.\nSecond line."
    assert by_title["a"].id == str((tmp_path / "a.txt").resolve())


def test_html_uses_trafilatura_metadata(tmp_path):
    html = """<html><head><title>Bridge approved</title><meta name="author" content="Jane Doe">
    <meta property="article:published_time" content="2024-03-05"></head><body><nav>Home | About</nav>
    <article><h1>Bridge approved</h1><p>The council voted on Tuesday to approve the new bridge across
    the river, which will cost 40 million euros. Work starts next spring.</p>
    <p>Residents said they were pleased with the decision after years of delays.</p></article>
    <footer>(c) 2024</footer></body></html>"""
    (tmp_path / "page.html").write_text(html)
    [a], errs = load(tmp_path / "page.html")
    assert not errs
    assert a.title == "Bridge approved" and a.author == "Jane Doe" and a.date == "2024-03-05"
    assert "40 million euros" in a.text and "Home | About" not in a.text


def test_pdf(tmp_path):
    (tmp_path / "r.pdf").write_bytes(
        make_pdf(["Annual report.", "Revenue grew 12 percent."], title="Report 2024")
    )
    [a], errs = load(tmp_path / "r.pdf")
    assert not errs
    assert a.title == "Report 2024" and "Revenue grew 12 percent" in a.text


def test_dumps_with_common_field_names(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        json.dumps(
            {
                "id": "x1",
                "headline": "H1",
                "content": "Body one.",
                "published_at": "2024-01-02",
                "link": "https://e.com/1",
                "byline": "Ann",
                "publisher": "Daily",
            }
        )
        + "\n"
        + json.dumps({"title": "H2", "body": "Body two.", "url": "https://e.com/2"})
        + "\n"
    )
    (tmp_path / "b.json").write_text(json.dumps({"articles": [{"title": "J", "text": "Json body."}]}))
    (tmp_path / "c.csv").write_text('title,text,author\nC1,"Csv, body.",Bob\n')
    arts, errs = load(tmp_path)
    assert not errs
    by = {a.title: a for a in arts}
    assert by["H1"] == Article(
        id="x1",
        text="Body one.",
        title="H1",
        date="2024-01-02",
        url="https://e.com/1",
        author="Ann",
        source="Daily",
        path=str(tmp_path / "a.jsonl"),
    )
    assert by["H2"].id == "https://e.com/2"  # no id: the url is the identity
    assert by["J"].text == "Json body."
    assert by["C1"].text == "Csv, body." and by["C1"].author == "Bob"


def test_field_override(tmp_path):
    (tmp_path / "d.csv").write_text("story,head\nThe story text.,Head\n")
    arts, errs = load(tmp_path / "d.csv", fields=parse_field_overrides(["text=story", "title=head"]))
    assert not errs and arts[0].text == "The story text." and arts[0].title == "Head"
    with pytest.raises(ConfigError, match="NAME=COLUMN"):
        parse_field_overrides(["bogus"])


@pytest.mark.parametrize("name", ["squad-dev", "rgb-news"])
def test_shared_eval_articles_ingest_as_they_are(name):
    path = shared("eval", name, "articles.jsonl")
    arts, errs = load(path)
    assert not errs
    assert len(arts) == sum(1 for line in path.open() if line.strip())
    assert len({a.id for a in arts}) == len(arts)


def test_bad_inputs_each_get_one_line_and_the_rest_loads(tmp_path):
    (tmp_path / "good.txt").write_text("A good article about ports.")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02binary\x00")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\n this is not really a pdf")
    (tmp_path / "lines.jsonl").write_text('{"text": "ok one"}\n{not json}\n{"text": "ok two"}\n')
    (tmp_path / "notext.csv").write_text("title,author\nT,A\n")
    (tmp_path / "big.txt").write_text("x" * (2 * 1024 * 1024))
    (tmp_path / "scripts.html").write_text("<html><script>var a = 1;</script></html>")
    arts, errs = load(tmp_path, max_file_mb=1)
    assert sorted(a.text for a in arts) == ["A good article about ports.", "ok one", "ok two"]
    reasons = {e.path.replace(str(tmp_path) + "/", ""): e.reason for e in errs}
    assert set(reasons) == {
        "empty.txt",
        "binary.txt",
        "latin1.txt",
        "broken.pdf",
        "lines.jsonl:2",
        "notext.csv",
        "big.txt",
        "scripts.html",
    }
    assert "empty" in reasons["empty.txt"]
    assert "binary" in reasons["binary.txt"]
    assert "UTF-8" in reasons["latin1.txt"]
    assert "PDF" in reasons["broken.pdf"]
    assert "malformed JSON" in reasons["lines.jsonl:2"]
    assert "no text column" in reasons["notext.csv"] and "--field text=" in reasons["notext.csv"]
    assert "size limit" in reasons["big.txt"]
    for e in errs:
        assert "\n" not in str(e)


def test_missing_and_unsupported_paths(tmp_path):
    (tmp_path / "x.docx").write_bytes(b"PK")
    _, errs = load(tmp_path / "nope.txt", tmp_path / "x.docx")
    assert [e.reason.split(" ")[0] for e in errs] == ["no", "unsupported"]
