"""The chat UI in a real headless Chromium (Debian's), driven by Playwright.

Never downloads a browser: without /usr/bin/chromium the module is skipped.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

import rag
from ui.serving import launch

from .conftest import ROOT, SAMPLE

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = ROOT / "docs" / "screenshot.png"
QUESTION = "How much aluminum could Russia sell to the United States?"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}

# The answer's own bubble, not the collapsible sources message under it.
ANSWER = "#chat .bot-row .message:not(.thought) > [data-testid='bot']"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (apt install chromium)"
    ),
]

# Records every text the answer bubble shows, as it changes, from inside the page.
WATCH_ANSWER = """(sel) => {
  window.__answers = [];
  const seen = () => {
    const el = document.querySelector(sel);
    const text = el ? el.innerText.trim() : '';
    if (text && window.__answers[window.__answers.length - 1] !== text) window.__answers.push(text);
  };
  new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url(tmp_path_factory, real_embedder, real_generator) -> Iterator[str]:
    index = tmp_path_factory.mktemp("browser") / "index"
    r = rag.RAG(rag.Settings(index=index), embedder=real_embedder, generator=real_generator)
    r.ingest([SAMPLE])
    demo, local_url = launch(r, port=free_port())
    yield local_url
    demo.close(verbose=False)


def test_chat_streams_cites_and_opens_the_source(url):
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            # Context-wide, so workers and any popup are recorded too, not just the page.
            context.on("request", lambda req: requests.append(req.url))
            context.on("websocket", lambda ws: requests.append(ws.url))
            page = context.new_page()
            page.goto(url)
            box = page.locator("#question textarea")
            box.wait_for()
            page.evaluate(WATCH_ANSWER, ANSWER)

            box.fill(QUESTION)
            box.press("Enter")
            page.wait_for_function(
                "() => document.querySelector('#timings')?.innerText.includes('tokens/s')", timeout=240_000
            )
            final = page.locator(ANSWER).inner_text().strip()
            assert "2 million" in final and "[1]" in final

            # It streamed: the bubble showed several growing prefixes of the answer on the way.
            seen = page.evaluate("() => window.__answers")
            prefixes = [t for t in seen if t != final and final.startswith(t)]
            assert len(prefixes) >= 2, seen
            assert [len(t) for t in prefixes] == sorted(len(t) for t in prefixes)

            # The cited source, with its evidence sentence highlighted.
            cited = page.locator("#sources .rag-src.cited").first
            assert "cited" in cited.locator(".rag-badge").inner_text()
            mark = cited.locator("mark", has_text="2 million tons")
            assert mark.count() == 1
            assert mark.evaluate("(m) => getComputedStyle(m).backgroundColor") != "rgba(0, 0, 0, 0)"

            # Clicking it opens the whole article at that passage.
            cited.click()
            here = page.locator("#article .rag-here")
            here.wait_for(timeout=30_000)
            assert "2 million tons" in here.locator("mark").inner_text()
            whole = page.locator("#article .rag-article-text").inner_text()
            assert whole.startswith("Moscow has expressed willingness")
            page.wait_for_function(
                """() => {
                  const box = document.querySelector('#article .rag-article-text');
                  const here = document.querySelector('#article .rag-here');
                  if (!box || !here) return false;
                  const b = box.getBoundingClientRect(), h = here.getBoundingClientRect();
                  return h.top >= b.top - 1 && h.top < b.bottom;
                }""",
                timeout=10_000,
            )

            # Leave the pointer off the cards so the screenshot shows no hover state.
            page.mouse.move(5, 5)
            page.evaluate("() => window.scrollTo(0, 0)")
            time.sleep(0.5)
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()

    assert requests, "no request was recorded"
    outside = [
        u
        for u in requests
        if urlparse(u).scheme not in ("data", "blob") and urlparse(u).hostname not in LOOPBACK
    ]
    assert outside == [], f"the page reached beyond loopback: {outside}"


def test_an_answer_withdrawn_by_verification_is_replaced_in_the_bubble(url):
    """The claim streams in as the model writes it; once the passages are found not to
    support it, the bubble shows the withdrawal and what the closest passage says instead."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            box = page.locator("#question textarea")
            box.wait_for()
            page.evaluate(WATCH_ANSWER, ANSWER)
            # The bundled model answers from a sentence that names no year (see test_api).
            box.fill("How much aluminum did Russia sell to China in 2019?")
            box.press("Enter")
            page.locator(f"{ANSWER} .rag-outcome").wait_for(timeout=240_000)
            bubble = page.locator(ANSWER)
            final = bubble.inner_text().strip()
            assert bubble.locator(".rag-outcome.unsupported").inner_text() == "withdrawn"
            assert "not supported by them (other numbers)" in final
            assert "The articles do not say. The closest passage says:" in final and "2019" not in final
            seen = page.evaluate("() => window.__answers")
            assert any("2019" in t for t in seen[:-1]), seen  # the claim had been on screen
        finally:
            browser.close()


def test_summarize_buttons_summarise_whole_articles_in_the_chat(url):
    """Summarize on an article in the Library, then on the article opened from a source:
    each a chat turn whose points are cited, the passages they came from beside it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.locator("#question textarea").wait_for()
            page.get_by_role("tab", name="Library").click()
            page.locator("#remove-choice input").click()
            page.get_by_role("option").first.click()
            page.locator("#summarize-chosen").click()
            # Back in the chat, the summary arrives with its outcome badge.
            page.locator("#chat").wait_for(state="visible", timeout=10_000)
            page.wait_for_function(
                "() => document.querySelectorAll('#chat .rag-outcome').length >= 1", timeout=240_000
            )
            summary = page.locator(ANSWER).last.inner_text()
            points = [x for x in summary.splitlines() if re.search(r"\[\d+\]$", x.strip())]
            assert len(points) >= 3 and "alumin" in summary.lower(), summary
            assert "Summarize" in page.locator("#chat [data-testid='user']").last.inner_text()
            cited = page.locator("#sources .rag-src.cited")
            assert cited.count() >= 2

            cited.first.click()
            page.locator("#article .rag-here").wait_for(timeout=30_000)
            page.locator("#summarize-viewed").click()
            page.wait_for_function(
                "() => document.querySelectorAll('#chat .rag-outcome').length >= 2", timeout=240_000
            )
            again = page.locator(ANSWER).last.inner_text()
            assert re.search(r"\[\d+\]", again), again
        finally:
            browser.close()


def test_compare_in_the_library_compares_the_chosen_articles_in_the_chat(
    tmp_path, real_embedder, real_generator
):
    """Two articles chosen in the Library and compared: a chat turn that says where they
    agree and where their figures differ, each point cited, the passages beside it."""
    from playwright.sync_api import sync_playwright

    r = rag.RAG(rag.Settings(index=tmp_path / "index"), embedder=real_embedder, generator=real_generator)
    r.ingest([ROOT / "tests" / "data" / "compare" / "articles.jsonl"])
    demo, local_url = launch(r, port=free_port())
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(local_url)
                page.locator("#question textarea").wait_for()
                page.get_by_role("tab", name="Library").click()
                for title in ("Brightline buys Kestrel Labs", "Brightline pays 260 million dollars"):
                    page.locator("#compare-choice input").click()
                    page.get_by_role("option", name=re.compile(re.escape(title))).click()
                page.locator("#compare-chosen").click()
                page.locator("#chat").wait_for(state="visible", timeout=10_000)
                page.wait_for_function(
                    "() => document.querySelectorAll('#chat .rag-outcome').length >= 1", timeout=60_000
                )
                text = page.locator(ANSWER).last.inner_text()
                assert "Where they differ" in text and "240 million dollars" in text, text
                assert "260 million dollars" in text and re.search(r"\[\d+\]", text), text
                assert "Compare" in page.locator("#chat [data-testid='user']").last.inner_text()
                assert page.locator("#sources .rag-src.cited").count() >= 2
            finally:
                browser.close()
    finally:
        demo.close(verbose=False)


def test_the_library_adds_a_page_and_a_feed_by_url(url):
    """The Library tab's "Add by URL" box: a page and a feed from a site on 127.0.0.1; a bad
    address says what is wrong; the library table lists what came in."""
    from playwright.sync_api import sync_playwright

    from . import webserver

    with webserver.serve() as site, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.get_by_role("tab", name="Library").click()
            box = page.locator("#add-url textarea")
            box.wait_for()
            box.fill(f"{site.base}/news/bridge.html\n{site.base}/wire.atom\n{site.base}/missing")
            page.locator("#fetch").click()
            report = page.locator("#ingest-report")
            page.wait_for_function(
                "() => document.querySelector('#ingest-report')?.innerText.includes('added')", timeout=120_000
            )
            text = report.inner_text()
            assert "2 added" in text, text
            assert f"{site.base}/missing: the server answered HTTP 404" in text
            table = page.locator("#articles")
            page.wait_for_function(
                "() => document.querySelector('#articles')?.innerText.includes('Harbour bridge')",
                timeout=30_000,
            )
            assert "Amateur astronomer finds a new comet" in table.inner_text()
            # The bad address stays in the box to be fixed; the rest is done.
            assert "missing" in box.input_value()
        finally:
            browser.close()


def test_a_saved_chat_reopens_after_a_restart_and_goes_on(tmp_path, real_embedder, real_generator):
    """A chat is saved as it goes; after the server restarts, the list shows it, it opens
    with its answer and sources, and a follow-up continues it."""
    from playwright.sync_api import sync_playwright

    index = tmp_path / "index"
    r = rag.RAG(rag.Settings(index=index), embedder=real_embedder, generator=real_generator)
    r.ingest([SAMPLE])
    done = "() => document.querySelector('#timings')?.innerText.includes('tokens/s')"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            served, url = launch(r, port=free_port())
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url)
                box = page.locator("#question textarea")
                box.wait_for()
                box.fill(QUESTION)
                box.press("Enter")
                page.wait_for_function(done, timeout=240_000)
                assert "2 million" in page.locator(ANSWER).inner_text()
            finally:
                served.close()
            (chat,) = rag.Chats(index).list()
            assert chat.title == QUESTION and chat.count == 1

            # Another server process on the same index: a new RAG, nothing kept in memory.
            r2 = rag.RAG(rag.Settings(index=index), embedder=real_embedder, generator=real_generator)
            served, url = launch(r2, port=free_port())
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url)
                page.locator("#question textarea").wait_for()
                page.locator("#saved-chats").get_by_text("Saved chats").first.click()
                page.locator("#past-chats input").click()
                page.get_by_role("option", name=re.compile(re.escape(QUESTION[:30]))).click()
                page.locator("#open-chat").click()
                page.wait_for_function(
                    "() => document.querySelector('#chats-status')?.innerText.includes('Opened')",
                    timeout=30_000,
                )
                assert "2 million" in page.locator(ANSWER).last.inner_text()
                assert page.locator("#sources .rag-src.cited mark", has_text="2 million tons").count() == 1

                page.locator("#question textarea").fill("On what condition?")
                page.locator("#question textarea").press("Enter")
                # Each finished answer carries its outcome badge: the second one is done.
                page.wait_for_function(
                    "() => document.querySelectorAll('#chat .rag-outcome').length >= 2", timeout=240_000
                )
            finally:
                served.close()
        finally:
            browser.close()
    saved = rag.Chats(index).get(chat.id)
    assert [t.question for t in saved.turns] == [QUESTION, "On what condition?"]
    # The reopened conversation reached the follow-up's search (a rewrite, or the subject).
    assert saved.turns[1].record["query"] != "On what condition?"


def test_choosing_a_collection_switches_the_library_and_the_answers(tmp_path, real_embedder, real_generator):
    """The Collection menu beside the header: choosing `hobby` shows its library and answers
    from its article alone."""
    from playwright.sync_api import sync_playwright

    r = rag.RAG(rag.Settings(index=tmp_path / "index"), embedder=real_embedder, generator=real_generator)
    r.ingest([SAMPLE])
    chess = tmp_path / "chess.md"
    chess.write_text(
        "# Ingrid Berg wins the Tromsø chess open\n\nIngrid Berg, a 19-year-old from Bergen, won the "
        "Tromsø chess open on Sunday with 8 points out of 9.\n",
        encoding="utf-8",
    )
    r.create_collection("hobby").ingest([chess])
    demo, local_url = launch(r, port=free_port())
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(local_url)
                page.locator("#question textarea").wait_for()
                page.locator("#collection input").click()
                page.get_by_role("option", name=re.compile(r"^hobby")).click()
                page.wait_for_function(
                    "() => document.body.innerText.includes('in the collection “hobby”')", timeout=30_000
                )
                page.get_by_role("tab", name="Library").click()
                page.wait_for_function(
                    "() => document.querySelector('#articles')?.innerText.includes('Tromsø chess open')",
                    timeout=30_000,
                )
                assert "russia-us-rare-earths" not in page.locator("#articles").inner_text()

                page.get_by_role("tab", name="Chat").click()
                box = page.locator("#question textarea")
                box.fill("Who won the Tromsø chess open?")
                box.press("Enter")
                page.wait_for_function(
                    "() => document.querySelectorAll('#chat .rag-outcome').length >= 1", timeout=120_000
                )
                assert "Ingrid Berg" in page.locator(ANSWER).last.inner_text()
                sources = page.locator("#sources").inner_text()
                assert "Tromsø chess open" in sources and "russia" not in sources.lower()
            finally:
                browser.close()
    finally:
        demo.close(verbose=False)
