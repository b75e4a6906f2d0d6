"""The Gradio face of `rag`: a chat over your articles, their sources, and the library.

It uses only the public names of the `rag` package. Everything stays on this machine: the
server binds loopback unless told otherwise, there is no share link, no analytics, no web
font, and Gradio serves back only the files it stored itself on upload.
"""

import os

# Gradio decides on telemetry when it is imported and when Blocks are built.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import html
import logging
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import gradio as gr

import rag
from rag import RAG, Settings

log = logging.getLogger(__name__)

# Questions about the bundled sample, samples/russia-us-rare-earths.txt.
EXAMPLES = (
    "How much aluminum could Russia sell to the United States?",
    "What did Kyiv ask for?",
    "What did Putin say about rare earth metals?",
)
UPLOAD_TYPES = [".txt", ".md", ".html", ".htm", ".pdf", ".json", ".jsonl", ".csv", ".rss", ".atom", ".xml"]
# How often an open page checks for a new index generation (a watch pass, a CLI ingest).
REFRESH_S = 15.0

NOT_FOUND = "The articles in your library do not hold the answer to this question."
WITHDRAWN = (
    "The model's answer was checked against the passages it was given and is not supported by "
    "them ({check}), so it is not shown."
)
WAITING = "Waiting for the model: it is answering another question. Yours starts next."
BUSY = "The model is busy with other requests. Try again in a moment."
EMPTY_LIBRARY = "No articles yet: add some in the **Library** tab, or run `rag ingest PATH...`."

# A turn of the conversation, kept as plain values so that Gradio can copy session state.
Turn = dict[str, Any]
# `--auth`: one (user, password) pair, or several.
Logins = tuple[str, str] | Sequence[tuple[str, str]] | None


THEME = gr.themes.Default(
    # Fonts named explicitly: served by Gradio itself or found on the system, never from Google.
    font=(gr.themes.LocalFont("Source Sans Pro"), "ui-sans-serif", "system-ui", "sans-serif"),
    font_mono=(gr.themes.LocalFont("IBM Plex Mono"), "ui-monospace", "monospace"),
)

CSS = """
.rag-small { font-size: 0.85em; color: var(--body-text-color-subdued); }
.rag-sources { display: flex; flex-direction: column; gap: 0.6rem; }
.rag-hint { font-size: 0.85em; color: var(--body-text-color-subdued); margin-bottom: 0.2rem; }
.rag-src { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 0.55rem 0.75rem;
  cursor: pointer; background: var(--background-fill-primary); }
.rag-src:hover, .rag-src:focus { border-color: var(--color-accent); outline: none; }
.rag-src.cited { border-left: 4px solid var(--color-accent); }
.rag-src-head { font-weight: 600; }
.rag-n { color: var(--color-accent); margin-right: 0.25rem; }
.rag-badge { font-size: 0.72em; font-weight: 600; padding: 0.05rem 0.4rem; border-radius: 999px;
  background: var(--color-accent-soft); color: var(--color-accent); margin-left: 0.35rem; }
.rag-meta { font-size: 0.82em; color: var(--body-text-color-subdued); margin-top: 0.1rem; }
.rag-also { font-size: 0.82em; color: var(--body-text-color-subdued); font-style: italic; }
.rag-withheld { font-size: 0.82em; margin-top: 0.3rem; padding: 0.2rem 0.4rem;
  border-left: 3px solid #d97706; }
.rag-passage { font-size: 0.92em; line-height: 1.45; margin-top: 0.35rem; }
.rag-sources mark, .rag-article mark, .rag-chat-src mark {
  background: #fde68a; color: #1f2937; padding: 0 0.1em; border-radius: 2px; }
.rag-article h3 { margin: 0 0 0.2rem 0; }
.rag-article-text { position: relative; white-space: pre-wrap; line-height: 1.5; max-height: 26rem;
  overflow-y: auto; margin-top: 0.5rem; padding-right: 0.4rem; }
.rag-here { background: rgba(59, 130, 246, 0.13); outline: 1px solid rgba(59, 130, 246, 0.45);
  border-radius: 3px; }
.rag-chat-src { font-size: 0.9em; margin: 0.15rem 0 0.45rem 0; }
.rag-outcome { margin-left: 0; margin-right: 0.35rem; }
.rag-outcome.found { background: #dcfce7; color: #166534; }
.rag-outcome.unsupported { background: #fef3c7; color: #92400e; }
.rag-outcome.refused { background: #e5e7eb; color: #374151; }
"""

# The badge in front of a finished answer: what the refusal path decided.
OUTCOME_BADGES = {"found": "supported", "unsupported": "withdrawn", "refused": "not in your articles"}

# The sources panel tells the server which card was clicked; links inside keep their job.
SOURCES_JS = """
const pick = (e) => {
  if (e.target.closest('a')) return;
  const card = e.target.closest('[data-n]');
  if (card) trigger('click', {turn: Number(card.dataset.turn), n: Number(card.dataset.n)});
};
element.addEventListener('click', pick);
element.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') pick(e); });
"""

# Scroll the article's own box to the passage, then bring the box into view.
ARTICLE_JS = """
const reveal = () => requestAnimationFrame(() => {
  const here = element.querySelector('.rag-here');
  const box = element.querySelector('.rag-article-text');
  if (!here || !box) return;
  box.scrollTop = Math.max(0, here.offsetTop - 48);
  element.scrollIntoView({block: 'nearest', behavior: 'smooth'});
});
watch('value', reveal);
reveal();
"""


class Engine:
    """The `RAG` behind every session: one model and one gate per process. Loading another
    model file swaps the object whole, so answers already running finish on the old one.
    Each browser session reads the collection it chose (`of`)."""

    def __init__(self, rag_: RAG) -> None:
        self.rag = rag_
        self._swap = threading.Lock()
        self._stops: dict[str, threading.Event] = {}
        self._stops_lock = threading.Lock()
        # Kept here rather than passed as an input to every event: each of them reads it.
        self._chosen: dict[str, str] = {}

    def of(self, request: gr.Request | None) -> RAG:
        """The collection the session of `request` chose (the server's own until it picks one;
        again the server's own if its collection was deleted meanwhile)."""
        name = self._chosen.get(_session(request))
        try:
            return self.rag.collection(name)
        except rag.CollectionNotFound:
            return self.rag

    def choose(self, request: gr.Request | None, name: str) -> RAG:
        r = self.rag.collection(name)
        self._chosen[_session(request)] = r.settings.collection
        return r

    def leave(self, request: gr.Request | None) -> None:
        self._chosen.pop(_session(request), None)

    def load_model(self, model: str) -> RAG:
        with self._swap:
            old = self.rag
            new = RAG(old.settings.with_(model=model), embedder=old.embedder, gate=old.gate)
            # Load now: a bad file must fail here, not at somebody's next question.
            _ = new.generator
            self.rag = new
            log.info("model switched to %s", model)
            return new

    def stop_flag(self, session: str) -> threading.Event:
        with self._stops_lock:
            flag = self._stops[session] = threading.Event()
            return flag

    def stop(self, session: str) -> bool:
        with self._stops_lock:
            flag = self._stops.get(session)
        if flag is None:
            return False
        flag.set()
        return True

    def forget(self, session: str, flag: threading.Event) -> None:
        with self._stops_lock:
            if self._stops.get(session) is flag:
                del self._stops[session]


def _session(request: gr.Request | None) -> str:
    return str(getattr(request, "session_hash", None) or "")


def collection_choices(r: RAG) -> list[tuple[str, str]]:
    return [
        (f"{c.name} ({c.articles} article{'s' if c.articles != 1 else ''})", c.name) for c in r.collections()
    ]


# -- rendering ------------------------------------------------------------------------------


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _safe_url(url: str) -> str | None:
    url = (url or "").strip()
    parsed = urlparse(url)
    return url if parsed.scheme in ("http", "https") and parsed.netloc else None


def _link(url: str, label: str | None = None) -> str:
    safe = _safe_url(url)
    if safe is None:
        return _esc(label or url)
    return (
        f'<a href="{_esc(safe)}" target="_blank" rel="noopener noreferrer">'
        f"{_esc(label or urlparse(safe).netloc)}</a>"
    )


def _spans(text: str, sentences: Sequence[str]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for sentence in sentences:
        sentence = sentence.strip()
        at = text.find(sentence) if sentence else -1
        if at >= 0:
            spans.append((at, at + len(sentence)))
    merged: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(e, merged[-1][1]))
        else:
            merged.append((s, e))
    return merged


def highlight(text: str, sentences: Sequence[str]) -> str:
    """`text` as HTML, each evidence sentence found in it inside `<mark>`."""
    out: list[str] = []
    pos = 0
    for s, e in _spans(text, sentences):
        out += [_esc(text[pos:s]), "<mark>", _esc(text[s:e]), "</mark>"]
        pos = e
    out.append(_esc(text[pos:]))
    return "".join(out)


def _meta(date: str, url: str, source: str, author: str = "", path: str = "") -> str:
    parts = [_esc(p) for p in (date, author) if p]
    if _safe_url(url):
        parts.append(_link(url, source or None))
    elif source:
        parts.append(_esc(source))
    elif path:
        parts.append("local file " + _esc(Path(path).name))
    else:
        parts.append("local file")
    return " · ".join(parts)


def _cited_so_far(text: str) -> set[int]:
    return set(rag.citations(text))


def _is_cited(turn: Turn, source: dict[str, Any]) -> bool:
    if turn["state"] == "done":
        return bool(source.get("cited"))
    return source["n"] in _cited_so_far(turn["answer"])


def sources_html(turns: list[Turn], index: int | None) -> str:
    """The sources panel for one turn: cards with the evidence marked; a click opens the article."""
    if index is None or not 0 <= index < len(turns):
        return '<div class="rag-hint">The passages behind each answer appear here.</div>'
    turn = turns[index]
    if not turn["sources"]:
        if turn["state"] in ("waiting", "searching"):
            return '<div class="rag-hint">Searching the articles…</div>'
        return '<div class="rag-hint">No passage was found for this question.</div>'
    hint = "Click a passage to read the whole article at that place."
    if turn["found"] is False:
        hint = "None of these passages answers the question. " + hint
    cards = []
    for s in turn["sources"]:
        cited = _is_cited(turn, s)
        badge = '<span class="rag-badge">cited</span>' if cited else ""
        meta = _meta(s["date"], s["url"], s["source"], s["author"])
        cards.append(
            f'<div class="rag-src{" cited" if cited else ""}" data-turn="{index}" data-n="{s["n"]}" '
            f'role="button" tabindex="0" title="Open the whole article at this passage">'
            f'<div class="rag-src-head"><span class="rag-n">[{s["n"]}]</span>'
            f"{_esc(s['title'] or '(untitled)')}{badge}</div>"
            f'<div class="rag-meta">{meta}</div>{_also(s)}'
            f'<div class="rag-passage">{highlight(s["text"], s["evidence"])}</div>{_withheld(s)}</div>'
        )
    return f'<div class="rag-sources"><div class="rag-hint">{hint}</div>{"".join(cards)}</div>'


def _also(source: dict[str, Any]) -> str:
    """The outlets that published the same story (syndicated copies, not indexed)."""
    copies = source.get("copies") or []
    if not copies:
        return ""
    names = []
    for c in copies:
        host = urlparse(c.get("url") or "").hostname
        outlet = c.get("source") or host or c.get("title") or "another outlet"
        label = outlet + (f", {c['date']}" if c.get("date") else "")
        names.append(_link(c["url"], label) if _safe_url(c.get("url") or "") else _esc(label))
    return f'<div class="rag-also">Also published by {" · ".join(names)}</div>'


def _withheld(source: dict[str, Any]) -> str:
    withheld = source.get("withheld") or []
    if not withheld:
        return ""
    quoted = " ".join(f"“{_esc(w[:160])}”" for w in withheld)
    return (
        f'<div class="rag-withheld">Not shown to the model: {len(withheld)} sentence'
        f"{'s' if len(withheld) > 1 else ''} that read as instructions to an AI: {quoted}</div>"
    )


def _chat_sources(turn: Turn) -> str:
    """The short list shown under an answer in the chat itself."""
    lines = [f"<p><em>Searched for:</em> {_esc(turn['query'])}{_time_note(turn)}</p>"]
    for s in turn["sources"]:
        cited = ' <span class="rag-badge">cited</span>' if _is_cited(turn, s) else ""
        meta = _meta(s["date"], s["url"], s["source"])
        evidence = " ".join(f"<mark>{_esc(e)}</mark>" for e in s["evidence"][:1])
        lines.append(
            f'<div class="rag-chat-src"><b>[{s["n"]}]</b> {_esc(s["title"] or "(untitled)")}'
            f"{' · ' + meta if meta else ''}{cited}<br>{evidence}</div>"
        )
    return "\n".join(lines)


def _time_note(turn: Turn) -> str:
    """The question's time as read, after "Searched for": `· time: since 2026-11-24 (last week)`."""
    label = (turn.get("query_time") or {}).get("label", "")
    return f' · <em>time:</em> <span class="rag-time">{_esc(label)}</span>' if label else ""


def _answer_text(turn: Turn) -> str:
    state = turn["state"]
    if state == "waiting":
        return "*Waiting for the model…*"
    if state == "searching":
        return "*Searching your articles…*"
    if state == "busy":
        return BUSY
    if state == "error":
        return f"**Could not answer:** {turn['note']}"
    if state == "stopped":
        return (turn["answer"].strip() or "…") + "\n\n*(stopped)*"
    if state != "done":
        return turn["answer"] or "*Writing…*"
    outcome = turn.get("outcome") or ("found" if turn["found"] else "refused")
    badge = f'<span class="rag-badge rag-outcome {outcome}">{OUTCOME_BADGES[outcome]}</span>'
    if outcome == "unsupported":
        check = turn["support"].partition(":")[2].strip()
        # The streamed text is replaced: what the closest passage says, never the model's claim.
        return f"{badge} {WITHDRAWN.format(check=check)}\n\n{turn['answer']}"
    if outcome == "refused":
        # No passage at all means an empty library: the pipeline's own text says what to do.
        return turn["answer"] if not turn["sources"] else f"{badge} **Not in your articles.** {NOT_FOUND}"
    # After the text, so that the streamed text stays a prefix of the final one.
    return f"{turn['answer']} {badge}"


def chat_messages(turns: list[Turn]) -> tuple[list[dict[str, Any]], list[int]]:
    """Chatbot messages for the turns, and the turn each message belongs to."""
    messages: list[dict[str, Any]] = []
    owners: list[int] = []
    for i, turn in enumerate(turns):
        messages.append({"role": "user", "content": turn["question"]})
        messages.append({"role": "assistant", "content": _answer_text(turn)})
        owners += [i, i]
        if turn["sources"]:
            cited = [s["n"] for s in turn["sources"] if _is_cited(turn, s)]
            title = f"Sources: {len(turn['sources'])} passages"
            if cited:
                title += ", cited " + " ".join(f"[{n}]" for n in cited)
            messages.append(
                {
                    "role": "assistant",
                    "content": _chat_sources(turn),
                    "metadata": {"title": title, "status": "done"},
                }
            )
            owners.append(i)
    return messages, owners


def turn_of(question: str, answer: rag.Answer) -> Turn:
    """A finished turn, as the chat shows it."""
    return {
        "question": question,
        "answer": answer.answer,
        "found": answer.found,
        "support": answer.support,
        "outcome": answer.outcome,
        "query": answer.query,
        "query_time": answer.query_time.to_dict() if answer.query_time else None,
        "sources": [src.to_dict() for src in answer.sources],
        "timings": asdict(answer.timings),
        "state": "done",
        "note": "",
    }


def saved_turns(chat: rag.Chat) -> list[Turn]:
    """A saved chat's turns, as the chat shows them."""
    return [turn_of(t.question, rag.Answer.from_dict(t.record)) for t in chat.turns]


def chat_choices(r: RAG, user: str) -> list[tuple[str, str]]:
    """The user's saved chats for the picker, newest first: (title · date, id)."""
    return [(f"{c.title} · {c.to_dict()['updated'][:10]}", c.id) for c in r.chats.list(user=user)]


def timings_line(turns: list[Turn]) -> str:
    last = next((t["timings"] for t in reversed(turns) if t.get("timings")), None)
    if not last or not last["total_ms"]:
        return ""
    parts = [f"retrieval {last['retrieve_ms']:.0f} ms"]
    if last["first_token_ms"]:
        parts.append(f"first token {last['first_token_ms'] / 1000:.1f} s")
    if last["tokens_per_s"]:
        parts.append(f"{last['tokens_per_s']:.1f} tokens/s")
    parts.append(f"total {last['total_ms'] / 1000:.1f} s")
    return '<span class="rag-small">Last answer: ' + " · ".join(parts) + "</span>"


def query_text(turns: list[Turn], index: int | None) -> str:
    if index is None or not 0 <= index < len(turns):
        return ""
    turn = turns[index]
    text = f"`{turn['query']}`"
    if turn["query"] != turn["question"]:
        text += "\n\n(rewritten from your question using the conversation)"
    label = (turn.get("query_time") or {}).get("label", "")
    if label:
        text += f"\n\nTime read in the question: **{label}**. *Ask again without its time* ignores it."
    return text


def article_html(info: rag.ArticleInfo, text: str, source: dict[str, Any] | None) -> str:
    """The whole article, the passage of `source` outlined and its evidence marked."""
    start, end = (source["start"], source["end"]) if source else (0, 0)
    if source and text[start:end] != source["text"]:
        # Re-ingested since the answer: find the passage again rather than mark the wrong text.
        at = text.find(source["text"])
        start, end = (at, at + len(source["text"])) if at >= 0 else (0, 0)
    if end > start:
        body = (
            _esc(text[:start])
            + '<span class="rag-here">'
            + highlight(text[start:end], source["evidence"] if source else ())
            + "</span>"
            + _esc(text[end:])
        )
    else:
        body = _esc(text)
    meta = _meta(info.date, info.url, info.source, info.author, info.path)
    return (
        f'<div class="rag-article"><h3>{_esc(info.title or "(untitled)")}</h3>'
        f'<div class="rag-meta">{meta}{" · " if meta else ""}{info.chars:,} characters</div>'
        f'<div class="rag-article-text">{body}</div></div>'
    )


ARTICLE_PLACEHOLDER = '<div class="rag-hint">Click a source to read its whole article here.</div>'


# -- the library ----------------------------------------------------------------------------


def _short(path: str) -> str:
    # Uploads sit in Gradio's cache under a hash folder: the file name is what the user knows.
    if "://" in path:
        return path
    return os.path.basename(path.rstrip("/")) or path


def library_line(r: RAG) -> str:
    articles = r.articles()
    name = r.settings.collection
    where = "the library" if name == rag.DEFAULT_COLLECTION else f"the collection “{_esc(name)}”"
    if not articles:
        return (
            EMPTY_LIBRARY
            if name == rag.DEFAULT_COLLECTION
            else f"No articles in {where} yet: " + (EMPTY_LIBRARY.split(": ", 1)[1])
        )
    chunks = sum(a.chunks for a in articles)
    return (
        f"**{len(articles)} article{'s' if len(articles) != 1 else ''}** in {where}, "
        f"{chunks} passages · model `{r.settings.model}`"
    )


def library_table(r: RAG) -> dict[str, Any]:
    rows = [
        [
            a.title or "(untitled)",
            a.date,
            (a.url or a.source or _short(a.path)) + (f" (+{a.copies} copies)" if a.copies else ""),
            a.chunks,
            a.chars,
            a.id,
        ]
        for a in r.articles()
    ]
    return {"headers": ["Title", "Date", "Source", "Passages", "Characters", "ID"], "data": rows}


def library_choices(r: RAG) -> list[tuple[str, str]]:
    return [(f"{a.title or '(untitled)'} ({a.chunks} passages)", a.id) for a in r.articles()]


def source_choices(r: RAG) -> list[str]:
    return sorted({a.source for a in r.articles() if a.source}, key=str.lower)


def ingest_report(report: rag.IngestReport) -> str:
    lines = []
    done = len(report.added) + len(report.updated) + len(report.unchanged) + len(report.copies)
    if done:
        copies = f", {len(report.copies)} stored as copies of indexed articles" if report.copies else ""
        lines.append(
            f"✓ {len(report.added)} added, {len(report.updated)} updated, "
            f"{len(report.unchanged)} unchanged{copies}; {report.chunks} passages embedded "
            f"in {report.seconds:.1f} s."
        )
    for path, reason in report.failed:
        lines.append(f"✗ {_short(path)}: {reason}")
    if not lines:
        lines.append("Nothing to add.")
    return "\n\n".join(lines)


def keep_uploads(files: Sequence[str], folder: Path) -> list[Path]:
    """Copy uploads out of Gradio's temporary folders into the library's own, under their
    own file names: that path is the article's identity, so uploading a new version of a
    file replaces the old one, and the originals survive Gradio's clean-up."""
    folder.mkdir(parents=True, exist_ok=True)
    kept = []
    for f in files:
        name = re.sub(r"[^\w.\- ]", "_", Path(f).name).strip(". ") or "upload.txt"
        target = folder / name
        # Copy into a new file of our own, then rename it over the name: a symlink planted at
        # that name is replaced, never written through to the file it points at.
        fd, part = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, open(f, "rb") as src:
                shutil.copyfileobj(src, out)
            os.replace(part, target)
        except BaseException:
            Path(part).unlink(missing_ok=True)
            raise
        kept.append(target)
    return kept


# -- the app --------------------------------------------------------------------------------


def build_app(rag_: RAG) -> gr.Blocks:
    """The whole UI around one `RAG`. Launch it with `launch()` or `serve()`, which add the
    theme, the CSS and the lock-down options that Gradio 6 takes at launch time."""
    engine = Engine(rag_)
    s = rag_.settings

    def outputs(
        turns: list[Turn], shown: int | None, status: str, textbox: Any = None, saved: Any = None
    ) -> tuple[Any, ...]:
        """The chat's outputs; `saved` the id of the saved chat a finished turn went to."""
        messages, _ = chat_messages(turns)
        return (
            messages,
            turns,
            gr.skip() if textbox is None else textbox,
            sources_html(turns, shown),
            query_text(turns, shown),
            status,
            timings_line(turns),
            shown,
            gr.skip() if saved is None else saved,
        )

    def user_of(request: gr.Request) -> str:
        # The login under `rag serve --auth`; everyone is the one user without it.
        return str(getattr(request, "username", None) or "")

    def ask(
        question: str,
        top_k: float,
        temperature: float,
        max_tokens: float,
        only_sources: list[str] | None,
        author: str | None,
        since: str | None,
        until: str | None,
        only_articles: list[str] | None,
        turns: list[Turn] | None,
        chat_id: str | None,
        request: gr.Request,
    ) -> Iterator[tuple[Any, ...]]:
        yield from answer_turn(
            question,
            top_k,
            temperature,
            max_tokens,
            only_sources,
            author,
            since,
            until,
            only_articles,
            turns,
            chat_id,
            request,
            read_time=None,
        )

    def ask_untimed(
        shown: int | None,
        top_k: float,
        temperature: float,
        max_tokens: float,
        only_sources: list[str] | None,
        author: str | None,
        since: str | None,
        until: str | None,
        only_articles: list[str] | None,
        turns: list[Turn] | None,
        chat_id: str | None,
        request: gr.Request,
    ) -> Iterator[tuple[Any, ...]]:
        """The shown question (else the last) asked again, its time reading undone."""
        turns = list(turns or [])
        at = shown if shown is not None and 0 <= shown < len(turns) else len(turns) - 1
        if at < 0 or not (turns[at].get("query_time") or {}).get("label"):
            yield outputs(turns, at if at >= 0 else None, "That question had no time to ignore.")
            return
        yield from answer_turn(
            turns[at]["question"],
            top_k,
            temperature,
            max_tokens,
            only_sources,
            author,
            since,
            until,
            only_articles,
            turns,
            chat_id,
            request,
            read_time=False,
        )

    def answer_turn(
        question: str,
        top_k: float,
        temperature: float,
        max_tokens: float,
        only_sources: list[str] | None,
        author: str | None,
        since: str | None,
        until: str | None,
        only_articles: list[str] | None,
        turns: list[Turn] | None,
        chat_id: str | None,
        request: gr.Request,
        *,
        read_time: bool | None,
        summarize: Sequence[str] = (),
        compare: Sequence[str] = (),
    ) -> Iterator[tuple[Any, ...]]:
        """One turn: `question` answered, or with `summarize` (article ids) those articles
        summarised, or with `compare` compared, `question` being the turn's label."""
        turns = list(turns or [])
        r = engine.of(request)
        question = (question or "").strip()
        if not question:
            yield outputs(turns, len(turns) - 1 if turns else None, "Type a question about your articles.")
            return
        try:
            filters = rag.Filters(
                source=only_sources or (),
                author=[a for a in (author or "").split(",") if a.strip()],
                since=since or "",
                until=until or "",
                ids=only_articles or (),
            )
        except rag.FilterError as e:
            yield outputs(turns, len(turns) - 1 if turns else None, f"Filters: {e}")
            return
        history = [
            m
            for t in turns
            if t["state"] in ("done", "stopped")
            for m in (
                {"role": "user", "content": t["question"]},
                {"role": "assistant", "content": t["answer"]},
            )
        ]
        waiting = r.gate.busy
        turn: Turn = {
            "question": question,
            "answer": "",
            "state": "waiting" if waiting else "searching",
            "query": question,
            "sources": [],
            "found": None,
            "support": "",
            "outcome": "",
            "timings": None,
            "note": "",
            "query_time": None,
        }
        turns.append(turn)
        index = len(turns) - 1
        session = request.session_hash or ""
        flag = engine.stop_flag(session)
        yield outputs(turns, index, WAITING if waiting else "", textbox="")
        pieces: Iterator[str] | None = None
        saved: str | None = None
        try:
            # A finished turn is saved in the chat (a new one at its first question).
            conversation = r.chat(chat_id or None, user=user_of(request), history=history)
            if summarize:
                stream = conversation.summarize(ids=summarize, max_tokens=int(max_tokens), question=question)
            elif compare:
                stream = conversation.compare(ids=compare, question=question)
            else:
                stream = conversation.stream(
                    question,
                    k=int(top_k),
                    temperature=float(temperature),
                    max_tokens=int(max_tokens),
                    filters=filters,
                    read_time=read_time,
                )
            turn["query"] = stream.query
            turn["query_time"] = stream.when.to_dict() if stream.when else None
            turn["sources"] = [src.to_dict() for src in stream.sources]
            waiting = r.gate.busy
            turn["state"] = "waiting" if waiting else "streaming"
            yield outputs(turns, index, WAITING if waiting else "")
            pieces = iter(stream)
            for piece in pieces:
                if flag.is_set():
                    break
                turn["answer"] += piece
                turn["state"] = "streaming"
                # A summary read in parts says how far it is.
                yield outputs(turns, index, stream.status)
            if flag.is_set():
                turn["state"] = "stopped"
            else:
                answer = stream.answer
                assert answer is not None
                turn.update(turn_of(question, answer))
                saved = conversation.id
            status = "Stopped." if turn["state"] == "stopped" else ""
        except rag.Busy:
            turn["state"] = "busy"
            status = BUSY
        except rag.RagError as e:
            turn.update(state="error", note=str(e))
            status = f"Could not answer: {e}"
        finally:
            if pieces is not None:
                # Closing the stream releases the model at once when the answer was stopped
                # or the browser went away mid-answer.
                close = getattr(pieces, "close", None)
                if close is not None:
                    close()
            engine.forget(session, flag)
        yield outputs(turns, index, status, saved=saved)

    def summarize_article(
        article_id: str | None,
        top_k: float,
        temperature: float,
        max_tokens: float,
        only_sources: list[str] | None,
        author: str | None,
        since: str | None,
        until: str | None,
        only_articles: list[str] | None,
        turns: list[Turn] | None,
        chat_id: str | None,
        request: gr.Request,
    ) -> Iterator[tuple[Any, ...]]:
        """The chosen article summarised as a turn of the chat."""
        turns = list(turns or [])
        found = engine.of(request).article(article_id) if article_id else None
        if found is None:
            note = (
                "Choose an article to summarize."
                if not article_id
                else "That article is no longer in the library."
            )
            yield outputs(turns, len(turns) - 1 if turns else None, note)
            return
        yield from answer_turn(
            f"Summarize “{found[0].title or found[0].id}”",
            top_k,
            temperature,
            max_tokens,
            only_sources,
            author,
            since,
            until,
            only_articles,
            turns,
            chat_id,
            request,
            read_time=None,
            summarize=(found[0].id,),
        )

    def compare_articles(
        article_ids: list[str] | None,
        top_k: float,
        temperature: float,
        max_tokens: float,
        only_sources: list[str] | None,
        author: str | None,
        since: str | None,
        until: str | None,
        only_articles: list[str] | None,
        turns: list[Turn] | None,
        chat_id: str | None,
        request: gr.Request,
    ) -> Iterator[tuple[Any, ...]]:
        """The articles chosen in the library compared, as a turn of the chat."""
        turns = list(turns or [])
        chosen = [a for a in (engine.of(request).article(i) for i in article_ids or ()) if a is not None]
        if not 2 <= len(chosen) <= rag.MAX_ARTICLES:
            note = f"Choose 2 to {rag.MAX_ARTICLES} articles to compare ({len(chosen)} chosen)."
            yield outputs(turns, len(turns) - 1 if turns else None, note)
            return
        yield from answer_turn(
            "Compare " + ", ".join(f"“{a.title or a.id}”" for a, _ in chosen),
            top_k,
            temperature,
            max_tokens,
            only_sources,
            author,
            since,
            until,
            only_articles,
            turns,
            chat_id,
            request,
            read_time=None,
            compare=[a.id for a, _ in chosen],
        )

    def stop(request: gr.Request) -> str:
        return "Stopping…" if engine.stop(request.session_hash or "") else ""

    def new_chat() -> tuple[Any, ...]:
        return (
            [],
            [],
            sources_html([], None),
            "",
            "",
            "",
            None,
            ARTICLE_PLACEHOLDER,
            None,
        )

    def saved_chats(current: str | None, request: gr.Request) -> Any:
        """The picker's list, the chat on screen chosen once it is saved."""
        choices = chat_choices(engine.of(request), user_of(request))
        return gr.update(choices=choices, value=current if any(c[1] == current for c in choices) else None)

    def open_chat(chosen: str | None, request: gr.Request) -> tuple[Any, ...]:
        """A saved chat back in the chat, its last turn's sources shown; follow-ups go on from it."""
        if not chosen:
            return (*(gr.skip() for _ in range(9)), "Choose a saved chat to open.")
        try:
            chat = engine.of(request).chats.get(chosen, user=user_of(request))
        except rag.RagError as e:
            return (*(gr.skip() for _ in range(9)), f"✗ {e}")
        turns = saved_turns(chat)
        shown = len(turns) - 1 if turns else None
        messages, _ = chat_messages(turns)
        return (
            messages,
            turns,
            sources_html(turns, shown),
            query_text(turns, shown),
            timings_line(turns),
            shown,
            ARTICLE_PLACEHOLDER,
            chat.id,
            chat.title,
            f"Opened “{_esc(chat.title)}” ({len(turns)} turn{'s' if len(turns) != 1 else ''}).",
        )

    def rename_chat(chosen: str | None, title: str, request: gr.Request) -> tuple[Any, str]:
        if not chosen:
            return gr.skip(), "Choose a saved chat to rename."
        try:
            chat = engine.of(request).chats.rename(chosen, title, user=user_of(request))
        except rag.RagError as e:
            return gr.skip(), f"✗ {e}"
        choices = chat_choices(engine.of(request), user_of(request))
        return gr.update(choices=choices, value=chat.id), "Renamed."

    def delete_chat(chosen: str | None, current: str | None, request: gr.Request) -> tuple[Any, Any, str]:
        if not chosen:
            return gr.skip(), gr.skip(), "Choose a saved chat to delete."
        try:
            engine.of(request).chats.delete(chosen, user=user_of(request))
        except rag.RagError as e:
            return gr.skip(), gr.skip(), f"✗ {e}"
        # The chat on screen stays readable; its next question starts a new saved chat.
        after = None if current == chosen else current
        choices = chat_choices(engine.of(request), user_of(request))
        return gr.update(choices=choices, value=None), after, "Deleted."

    def pick_turn(turns: list[Turn] | None, evt: gr.SelectData) -> tuple[str, str, int | None]:
        turns = turns or []
        _, owners = chat_messages(turns)
        at = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        shown = owners[at] if isinstance(at, int) and 0 <= at < len(owners) else None
        return sources_html(turns, shown), query_text(turns, shown), shown

    def open_source(
        turns: list[Turn] | None, evt: gr.EventData, request: gr.Request
    ) -> tuple[str, str | None]:
        """The article of the clicked passage, and its id (what Summarize would summarise)."""
        turns = turns or []
        try:
            turn = turns[int(getattr(evt, "turn", -1))]
            n = int(getattr(evt, "n", -1))
        except (IndexError, TypeError, ValueError):
            return ARTICLE_PLACEHOLDER, None
        source = next((x for x in turn["sources"] if x["n"] == n), None)
        if source is None:
            return ARTICLE_PLACEHOLDER, None
        found = engine.of(request).article(source["article_id"])
        if found is None:
            return '<div class="rag-hint">This article is no longer in the library.</div>', None
        info, text = found
        return article_html(info, text, source), info.id

    def library(request: gr.Request) -> tuple[str, dict[str, Any], Any, Any, Any, Any]:
        r = engine.of(request)
        return (
            library_line(r),
            library_table(r),
            gr.update(choices=library_choices(r), value=None),
            gr.update(choices=source_choices(r)),
            gr.update(choices=library_choices(r)),
            gr.update(choices=library_choices(r), value=[]),
        )

    def add_articles(
        files: list[str] | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's way to ask for a progress bar
    ) -> tuple[Any, ...]:
        if not files:
            return (None, "Choose one or more files to add.", *library(request))

        def embedded(done: int, total: int) -> None:
            progress((done, total), desc="Embedding passages", unit="passages")

        progress(0, desc=f"Reading {len(files)} file{'s' if len(files) != 1 else ''}")
        r = engine.of(request)
        kept = keep_uploads(files, r.settings.folder / "uploads")
        try:
            report = r.ingest([str(f) for f in kept], progress=embedded)
        except rag.RagError as e:
            return (None, f"✗ {e}", *library(request))
        for path, _ in report.failed:
            Path(path).unlink(missing_ok=True)
        log.info("ingested %d uploads: %s", len(files), ingest_report(report).replace("\n\n", "; "))
        return (None, ingest_report(report), *library(request))

    def add_urls(
        text: str | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's way to ask for a progress bar
    ) -> tuple[Any, ...]:
        urls = [u.strip() for u in re.split(r"[\s,]+", text or "") if u.strip()]
        if not urls:
            return (text, "Paste the address of a page or of an RSS/Atom feed.", *library(request))
        bad = [u for u in urls if not u.lower().startswith(("http://", "https://"))]
        if bad:
            note = f"✗ {_esc(bad[0])}: give a full web address, starting with https://"
            return (text, note, *library(request))

        def embedded(done: int, total: int) -> None:
            progress((done, total), desc="Embedding passages", unit="passages")

        progress(0, desc=f"Fetching {len(urls)} address{'es' if len(urls) != 1 else ''}")
        try:
            report = engine.of(request).ingest(urls, progress=embedded)
        except rag.RagError as e:
            return (text, f"✗ {e}", *library(request))
        log.info("ingested %d URLs: %s", len(urls), ingest_report(report).replace("\n\n", "; "))
        return ("" if report.ok else text, ingest_report(report), *library(request))

    def refresh(seen: str, request: gr.Request) -> tuple[Any, ...]:
        # Another writer (a watch pass, `rag ingest`) committed: show the new library.
        now = str(engine.of(request).stats().get("generation", ""))
        if now == seen:
            return (seen, *(gr.skip() for _ in range(5)))
        return (now, *library(request))

    def remove_article(article_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        if not article_id:
            return ("Choose an article to remove.", *library(request))
        r = engine.of(request)
        found = r.article(article_id)
        try:
            missing = r.remove([article_id])
        except rag.RagError as e:
            return (f"✗ {e}", *library(request))
        if missing:
            return (f"✗ No article with id {article_id} in the library.", *library(request))
        title = found[0].title if found else article_id
        return (f"Removed “{title}”.", *library(request))

    def load_model(model: str, request: gr.Request) -> tuple[str, str]:
        model = (model or "").strip()
        if not model:
            return f"Model: `{engine.rag.settings.model}`", library_line(engine.of(request))
        try:
            r = engine.load_model(model)
        except rag.RagError as e:
            return (
                f"✗ {e}\n\nStill using `{engine.rag.settings.model}`.",
                library_line(engine.of(request)),
            )
        return f"✓ Model `{r.settings.model}` loaded.", library_line(engine.of(request))

    def switch_collection(name: str | None, request: gr.Request) -> tuple[Any, ...]:
        """Another collection: a new chat over it, its saved chats, library and filters."""
        try:
            r = engine.choose(request, name or rag_.settings.collection)
        except rag.RagError as e:
            return (*(gr.skip() for _ in range(9)), gr.skip(), f"✗ {e}", *(gr.skip() for _ in range(7)))
        line, table, chosen, _, _, comparing = library(request)
        return (
            *new_chat(),
            gr.update(choices=chat_choices(r, user_of(request)), value=None),
            "",
            str(r.stats().get("generation", "")),
            line,
            table,
            chosen,
            # The other collection's sources and articles are not this one's: filters cleared.
            gr.update(choices=source_choices(r), value=[]),
            gr.update(choices=library_choices(r), value=[]),
            comparing,
        )

    def collections_list(request: gr.Request) -> Any:
        return gr.update(choices=collection_choices(engine.rag), value=engine.of(request).settings.collection)

    def create_collection(name: str | None, request: gr.Request) -> tuple[Any, Any, str]:
        name = (name or "").strip()
        if not name:
            return gr.skip(), gr.skip(), "Type a name for the new collection."
        try:
            r = engine.rag.create_collection(name)
        except rag.RagError as e:
            return gr.skip(), gr.skip(), f"✗ {e}"
        engine.choose(request, r.settings.collection)
        return (
            gr.update(choices=collection_choices(engine.rag), value=r.settings.collection),
            "",
            f"Created the collection “{_esc(name)}”: add articles to it here.",
        )

    with gr.Blocks(
        title="Chat with your articles", analytics_enabled=False, delete_cache=(3600, 3600)
    ) as demo:
        turns = gr.State([])
        shown = gr.State(None)
        # The saved chat the conversation on screen goes to (None: a new one at its first turn).
        chat_id = gr.State(None)
        gr.Markdown("## Chat with your articles")
        with gr.Row(equal_height=True):
            header = gr.Markdown(library_line(rag_))
            # The chat, the saved chats, the library and the filters all follow it.
            collection = gr.Dropdown(
                choices=collection_choices(rag_),
                value=rag_.settings.collection,
                label="Collection",
                scale=0,
                min_width=220,
                elem_id="collection",
            )
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat"), gr.Row(equal_height=False):
                with gr.Column(scale=3, min_width=420):
                    chatbot = gr.Chatbot(
                        label="Chat",
                        elem_id="chat",
                        height=460,
                        buttons=["copy"],
                        feedback_options=None,
                        latex_delimiters=[],
                        placeholder="Ask about the articles in your library. Answers cite passages as [1].",
                    )
                    with gr.Row(equal_height=True):
                        question = gr.Textbox(
                            show_label=False,
                            placeholder="Ask a question about your articles…",
                            lines=1,
                            max_lines=4,
                            scale=6,
                            autofocus=True,
                            container=False,
                            elem_id="question",
                        )
                        send = gr.Button("Ask", variant="primary", scale=1, min_width=70)
                        stop_btn = gr.Button("Stop", variant="stop", scale=1, min_width=70)
                    status = gr.Markdown("", elem_id="status")
                    timings = gr.HTML("", elem_id="timings")
                    gr.Examples(
                        examples=[[q] for q in EXAMPLES],
                        inputs=[question],
                        label="Questions about the bundled sample article",
                    )
                    with gr.Row():
                        new_chat_btn = gr.Button("New chat", size="sm")
                    with gr.Accordion("Saved chats", open=False, elem_id="saved-chats"):
                        with gr.Row(equal_height=True):
                            past = gr.Dropdown(
                                choices=[],
                                value=None,
                                label="Saved chats (newest first)",
                                scale=4,
                                elem_id="past-chats",
                            )
                            open_btn = gr.Button("Open", scale=1, min_width=70, elem_id="open-chat")
                        with gr.Row(equal_height=True):
                            chat_title = gr.Textbox(
                                label="Title",
                                placeholder="Rename the chosen chat…",
                                scale=4,
                                elem_id="chat-title",
                            )
                            rename_btn = gr.Button("Rename", scale=1, min_width=70, elem_id="rename-chat")
                            delete_btn = gr.Button(
                                "Delete", variant="stop", scale=1, min_width=70, elem_id="delete-chat"
                            )
                        chats_status = gr.Markdown("", elem_id="chats-status")
                    with gr.Accordion("Settings", open=False):
                        top_k = gr.Slider(1, 20, value=s.top_k, step=1, label="Passages per question")
                        temperature = gr.Slider(
                            0.0, 1.5, value=s.temperature, step=0.05, label="Temperature (0: deterministic)"
                        )
                        max_tokens = gr.Slider(
                            16,
                            max(16, min(1024, s.n_ctx // 2)),
                            value=s.max_tokens,
                            step=8,
                            label="Longest answer (tokens)",
                        )
                        with gr.Row(equal_height=True):
                            model = gr.Textbox(
                                value=s.model,
                                label="Model file (.gguf path or bundled alias)",
                                scale=4,
                            )
                            load_btn = gr.Button("Load model", scale=1)
                        model_status = gr.Markdown(f"Model: `{s.model}`")
                    with gr.Accordion("Only some articles", open=False):
                        only_sources = gr.Dropdown(
                            choices=source_choices(rag_),
                            value=[],
                            multiselect=True,
                            label="Sources",
                            elem_id="filter-source",
                        )
                        author = gr.Textbox(
                            value="", label="Author (any of, comma-separated)", elem_id="filter-author"
                        )
                        with gr.Row(equal_height=True):
                            since = gr.Textbox(
                                value="", label="Since", placeholder="YYYY-MM-DD", elem_id="filter-since"
                            )
                            until = gr.Textbox(
                                value="", label="Until", placeholder="YYYY-MM-DD", elem_id="filter-until"
                            )
                        only_articles = gr.Dropdown(
                            choices=library_choices(rag_),
                            value=[],
                            multiselect=True,
                            label="Articles",
                            elem_id="filter-articles",
                        )
                with gr.Column(scale=2, min_width=320):
                    gr.Markdown("### Sources")
                    sources = gr.HTML(
                        sources_html([], None), js_on_load=SOURCES_JS, elem_id="sources", padding=False
                    )
                    with gr.Accordion("Searched for", open=False):
                        query = gr.Markdown("", elem_id="query")
                        untimed_btn = gr.Button(
                            "Ask again without its time", size="sm", elem_id="ignore-time"
                        )
                    gr.Markdown("### Article")
                    viewer = gr.HTML(ARTICLE_PLACEHOLDER, js_on_load=ARTICLE_JS, elem_id="article")
                    viewing = gr.State(None)
                    summarize_btn = gr.Button("Summarize this article", size="sm", elem_id="summarize-viewed")
            with gr.Tab("Library", id="library"):
                gr.Markdown(
                    "Add articles: " + " ".join(f"`{t}`" for t in UPLOAD_TYPES) + ", several files at once. "
                    "A `.json`, `.jsonl` or `.csv` dump holds one article per record."
                )
                files = gr.File(
                    label="Add articles", file_count="multiple", file_types=UPLOAD_TYPES, elem_id="upload"
                )
                with gr.Row(equal_height=True):
                    url_box = gr.Textbox(
                        label="Add by URL",
                        placeholder="https://… a page or an RSS/Atom feed (several: one per line)",
                        lines=1,
                        max_lines=6,
                        scale=5,
                        elem_id="add-url",
                    )
                    fetch_btn = gr.Button("Fetch", scale=1, min_width=90, elem_id="fetch")
                report = gr.Markdown("", elem_id="ingest-report")
                with gr.Row(equal_height=True):
                    new_name = gr.Textbox(
                        label="New collection (its own articles and chats)",
                        placeholder="e.g. work",
                        scale=5,
                        elem_id="new-collection",
                    )
                    create_btn = gr.Button("Create", scale=1, min_width=90, elem_id="create-collection")
                generation = gr.State(str(rag_.stats().get("generation", "")))
                table = gr.Dataframe(
                    value=library_table(rag_),
                    label="Articles",
                    interactive=False,
                    wrap=True,
                    column_widths=["26%", "10%", "20%", "8%", "9%", "27%"],
                    elem_id="articles",
                )
                gr.Markdown(
                    "Summarize an article in the chat, or remove it from the index (the file itself is "
                    "left alone):"
                )
                with gr.Row(equal_height=True):
                    chosen = gr.Dropdown(
                        choices=library_choices(rag_),
                        value=None,
                        show_label=False,
                        container=False,
                        scale=4,
                        elem_id="remove-choice",
                    )
                    library_summarize_btn = gr.Button(
                        "Summarize", scale=1, min_width=100, elem_id="summarize-chosen"
                    )
                    remove_btn = gr.Button("Remove", variant="stop", scale=1, min_width=100)
                removed = gr.Markdown("")
                gr.Markdown(
                    f"Compare how 2 to {rag.MAX_ARTICLES} articles report the same thing (where they agree, "
                    "where their figures and names differ):"
                )
                with gr.Row(equal_height=True):
                    comparing_ids = gr.Dropdown(
                        choices=library_choices(rag_),
                        value=[],
                        multiselect=True,
                        max_choices=rag.MAX_ARTICLES,
                        show_label=False,
                        container=False,
                        scale=4,
                        elem_id="compare-choice",
                    )
                    compare_btn = gr.Button("Compare", scale=1, min_width=100, elem_id="compare-chosen")

        chat_outputs = [chatbot, turns, question, sources, query, status, timings, shown, chat_id]
        # What a question is asked with: the settings and filters, and the conversation.
        asked_with = [
            top_k,
            temperature,
            max_tokens,
            only_sources,
            author,
            since,
            until,
            only_articles,
            turns,
            chat_id,
        ]
        asking = gr.on(
            [question.submit, send.click],
            ask,
            inputs=[question, *asked_with],
            outputs=chat_outputs,
            api_name="ask",
            show_progress="hidden",
            trigger_mode="once",
            # The model's Gate is the one queue: it tells a waiting user so, and refuses when full.
            concurrency_limit=None,
        )
        untimed = untimed_btn.click(
            ask_untimed,
            inputs=[shown, *asked_with],
            outputs=chat_outputs,
            api_name="ask_untimed",
            show_progress="hidden",
            trigger_mode="once",
            concurrency_limit=None,
        )
        # Summarize: the article open beside the chat, or the one chosen in the library;
        # Compare: the articles chosen in the library.
        summarizing: list[Any] = []
        for button, which, task in (
            (summarize_btn, viewing, summarize_article),
            (library_summarize_btn, chosen, summarize_article),
            (compare_btn, comparing_ids, compare_articles),
        ):
            shown_chat = button.click(
                lambda: gr.Tabs(selected="chat"), outputs=[tabs], api_visibility="private"
            )
            summarizing.append(
                shown_chat.then(
                    task,
                    inputs=[which, *asked_with],
                    outputs=chat_outputs,
                    show_progress="hidden",
                    trigger_mode="once",
                    concurrency_limit=None,
                    api_visibility="private",
                )
            )
            summarizing[-1].then(saved_chats, inputs=[chat_id], outputs=[past], api_visibility="private")
        stop_btn.click(
            stop, outputs=[status], api_name="stop", concurrency_limit=None, show_progress="hidden"
        )
        new_chat_btn.click(
            new_chat,
            outputs=[chatbot, turns, sources, query, status, timings, shown, viewer, chat_id],
            cancels=[asking, untimed, *summarizing],
            api_name="new_chat",
        ).then(lambda: None, outputs=[viewing], api_visibility="private")
        open_btn.click(
            open_chat,
            inputs=[past],
            outputs=[
                chatbot,
                turns,
                sources,
                query,
                timings,
                shown,
                viewer,
                chat_id,
                chat_title,
                chats_status,
            ],
            cancels=[asking, untimed, *summarizing],
            api_name="open_chat",
        ).then(lambda: None, outputs=[viewing], api_visibility="private")
        rename_btn.click(
            rename_chat, inputs=[past, chat_title], outputs=[past, chats_status], api_name="rename_chat"
        )
        delete_btn.click(
            delete_chat, inputs=[past, chat_id], outputs=[past, chat_id, chats_status], api_name="delete_chat"
        )
        chatbot.select(pick_turn, inputs=[turns], outputs=[sources, query, shown], api_visibility="private")
        sources.click(open_source, inputs=[turns], outputs=[viewer, viewing], api_visibility="private")
        library_outputs = [header, table, chosen, only_sources, only_articles, comparing_ids]
        files.upload(
            add_articles,
            inputs=[files],
            outputs=[files, report, *library_outputs],
            api_name="add_articles",
            concurrency_id="library",
            show_progress_on=[report],
        )
        gr.on(
            [fetch_btn.click, url_box.submit],
            add_urls,
            inputs=[url_box],
            outputs=[url_box, report, *library_outputs],
            api_name="add_urls",
            concurrency_id="library",
            show_progress_on=[report],
        )
        gr.Timer(REFRESH_S).tick(
            refresh,
            inputs=[generation],
            outputs=[generation, *library_outputs],
            api_visibility="private",
            show_progress="hidden",
        )
        remove_btn.click(
            remove_article,
            inputs=[chosen],
            outputs=[removed, *library_outputs],
            api_name="remove_article",
            concurrency_id="library",
        )
        gr.on(
            [load_btn.click, model.submit],
            load_model,
            inputs=[model],
            outputs=[model_status, header],
            api_name="load_model",
        )
        switched = [
            chatbot,
            turns,
            sources,
            query,
            status,
            timings,
            shown,
            viewer,
            chat_id,
            past,
            chats_status,
            generation,
            *library_outputs,
        ]
        collection.input(
            switch_collection,
            inputs=[collection],
            outputs=switched,
            cancels=[asking, untimed, *summarizing],
            api_name="switch_collection",
        ).then(lambda: None, outputs=[viewing], api_visibility="private")
        gr.on(
            [create_btn.click, new_name.submit],
            create_collection,
            inputs=[new_name],
            outputs=[collection, new_name, report],
            api_name="create_collection",
        ).success(switch_collection, inputs=[collection], outputs=switched, api_visibility="private").then(
            lambda: None, outputs=[viewing], api_visibility="private"
        )
        demo.load(library, outputs=library_outputs, api_name="library")
        demo.load(collections_list, outputs=[collection], api_name="collections")
        demo.unload(engine.leave)
        demo.load(saved_chats, inputs=[chat_id], outputs=[past], api_name="saved_chats")
        # A finished turn is in the saved chats: the picker shows it.
        for answered in (asking, untimed):
            answered.then(saved_chats, inputs=[chat_id], outputs=[past], api_visibility="private")
    return demo


# -- launching ------------------------------------------------------------------------------


def launch_options(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    auth: Logins = None,
) -> dict[str, Any]:
    """What `Blocks.launch` needs to serve this app locked down."""
    return {
        "server_name": host,
        "server_port": port,
        "share": False,
        "auth": auth,
        "max_file_size": int(settings.max_file_mb * 1024 * 1024),
        "theme": THEME,
        "css": CSS,
        "ssr_mode": False,
        "pwa": False,
        "mcp_server": False,
        "enable_monitoring": False,
        "run_history": False,
        "footer_links": ["api"],
        "inbrowser": False,
        "show_error": False,
        "allowed_paths": [],
        "strict_cors": True,
    }


def mount_options(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    auth: Logins = None,
) -> dict[str, Any]:
    """`launch_options` for `gr.mount_gradio_app`, which takes the same lock-down options
    (theme, css, auth, max_file_size, allowed_paths, no SSR/PWA/MCP/monitoring/run
    history...) except three it has no use for: a mounted app never opens a share link or
    a browser, and its CORS check is always the strict one."""
    options = launch_options(settings, host=host, port=port, auth=auth)
    assert options.pop("share") is False and options.pop("strict_cors") is True
    options.pop("inbrowser")
    options["server_port"] = port or 0
    return options


def build_server(
    rag_: RAG,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    auth: Logins = None,
    api_key: str | None = None,
    ui: bool = True,
) -> tuple[Any, gr.Blocks | None]:
    """One ASGI app for one `RAG`: the HTTP API under /v1 (and /health, /openapi.json) and,
    unless `ui=False`, the chat at /. Both share the model and its Gate, so an answer in
    the browser and one over the API wait for each other in the same queue."""
    from rag.server import create_app, logins_of

    auth = logins_of(auth) or None
    app = create_app(rag_, api_key=api_key, login=auth)
    if not ui:
        return app, None
    demo = build_app(rag_)
    demo.queue(default_concurrency_limit=1)
    app = gr.mount_gradio_app(
        app, demo, path="/", **mount_options(rag_.settings, host=host, port=port, auth=auth)
    )
    return app, demo


def _listen(host: str, port: int | None) -> Any:
    """A listening socket, so that a port in use fails here, with a clear reason."""
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port or 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise rag.ConfigError(f"cannot listen on {host}: {e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise rag.ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port or --host"
        ) from None
    sock.set_inheritable(True)
    return sock


def _url(sock: Any) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _uvicorn(app: Any) -> Any:
    import uvicorn

    # log_config=None: uvicorn logs through the process's own logging set-up (rag -v).
    # A short graceful shutdown: open event streams of idle browser tabs never end by themselves.
    config = uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=3)
    return uvicorn.Server(config)


class Served:
    """A server running in a background thread; `close()` stops it and frees the port."""

    def __init__(self, server: Any, thread: threading.Thread, demo: gr.Blocks | None, url: str) -> None:
        self.server = server
        self.thread = thread
        self.demo = demo
        self.url = url

    def close(self, verbose: bool = False) -> None:
        if self.demo is not None:
            # First the UI's queue and heartbeats, so that no event stream holds the shutdown.
            self.demo.close(verbose=False)
        self.server.should_exit = True
        self.thread.join(timeout=15)
        log.log(logging.INFO if verbose else logging.DEBUG, "closed the server on %s", self.url)


def launch(
    rag_: RAG,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    auth: Logins = None,
    quiet: bool = True,
    api_key: str | None = None,
    ui: bool = True,
) -> tuple[Served, str]:
    """Start the app (the UI unless `ui=False`, and the API) in the background; returns the
    server (`.close()` stops it) and its local URL. `port=None` takes a free one."""
    import time

    app, demo = build_server(rag_, host=host, port=port, auth=auth, api_key=api_key, ui=ui)
    sock = _listen(host, port)
    url = _url(sock)
    server = _uvicorn(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="rag-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise rag.RagError(f"the server on {url} did not start; rerun with `rag -v` for its log")
        time.sleep(0.02)
    log.log(logging.DEBUG if quiet else logging.INFO, "serving on %s", url)
    return Served(server, thread, demo, url), url


def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: Logins = None,
    api_key: str | None = None,
    ui: bool = True,
    watch: Sequence[str] = (),
    every: float = 900.0,
) -> None:
    """Load the models, then serve the UI (unless `ui=False`) and the API until interrupted
    (`rag serve`); `watch` folders, feeds and pages are ingested every `every` seconds."""
    r = RAG(settings)
    # Load both models before the first visitor, so that a bad model path stops the start.
    _ = r.embedder, r.generator
    if settings.read_time:
        # Reading a first date loads dateparser's data (a second or more): not on a visitor's time.
        r.query_time("What happened last week?")
    check = getattr(r.generator, "check", None)
    problem = check() if check is not None else None
    if problem:
        # The engine may well come up after us: a warning, and answers fail until it does.
        log.warning("%s", problem)
    app, demo = build_server(r, host=host, port=port, auth=auth, api_key=api_key, ui=ui)
    sock = _listen(host, port)
    url = _url(sock)
    log.info("serving %s on %s%s", settings.index, url, "" if ui else " (API only)")
    from rag.client import announce, withdraw

    # `rag ask` and `rag chat` on this index find this server here and ask it instead.
    announce(settings.index, url, key=bool(api_key or settings.api_key), login=auth is not None)
    watcher = rag.Watcher(r, list(watch), every=every).start() if watch else None
    try:
        _uvicorn(app).run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully, then re-raises the Ctrl-C: the way to stop, not an error.
        log.info("stopped")
    finally:
        if watcher is not None:
            watcher.stop()
        withdraw(settings.index)
        if demo is not None:
            demo.close(verbose=False)
        sock.close()
