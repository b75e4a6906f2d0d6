"""What the chat shows: the HTML of passages, articles and answers, the chat's messages, the
library's table and choice lists, and the look (theme, CSS, the scripts of the HTML panels).
Plain functions of `rag`'s values, no Gradio events."""

import html
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import gradio as gr

import rag
from rag import RAG

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


# -- rendering ------------------------------------------------------------------------------


def esc(text: str) -> str:
    """`text` as HTML, safe inside an element or an attribute's quotes."""
    return html.escape(text, quote=True)


def _safe_url(url: str) -> str | None:
    url = (url or "").strip()
    parsed = urlparse(url)
    return url if parsed.scheme in ("http", "https") and parsed.netloc else None


def _link(url: str, label: str | None = None) -> str:
    safe = _safe_url(url)
    if safe is None:
        return esc(label or url)
    return (
        f'<a href="{esc(safe)}" target="_blank" rel="noopener noreferrer">'
        f"{esc(label or urlparse(safe).netloc)}</a>"
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
        out += [esc(text[pos:s]), "<mark>", esc(text[s:e]), "</mark>"]
        pos = e
    out.append(esc(text[pos:]))
    return "".join(out)


def _meta(date: str, url: str, source: str, author: str = "", path: str = "") -> str:
    parts = [esc(p) for p in (date, author) if p]
    if _safe_url(url):
        parts.append(_link(url, source or None))
    elif source:
        parts.append(esc(source))
    elif path:
        parts.append("local file " + esc(Path(path).name))
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
            f"{esc(s['title'] or '(untitled)')}{badge}</div>"
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
        names.append(_link(c["url"], label) if _safe_url(c.get("url") or "") else esc(label))
    return f'<div class="rag-also">Also published by {" · ".join(names)}</div>'


def _withheld(source: dict[str, Any]) -> str:
    withheld = source.get("withheld") or []
    if not withheld:
        return ""
    quoted = " ".join(f"“{esc(w[:160])}”" for w in withheld)
    return (
        f'<div class="rag-withheld">Not shown to the model: {len(withheld)} sentence'
        f"{'s' if len(withheld) > 1 else ''} that read as instructions to an AI: {quoted}</div>"
    )


def _chat_sources(turn: Turn) -> str:
    """The short list shown under an answer in the chat itself."""
    lines = [f"<p><em>Searched for:</em> {esc(turn['query'])}{_time_note(turn)}</p>"]
    for s in turn["sources"]:
        cited = ' <span class="rag-badge">cited</span>' if _is_cited(turn, s) else ""
        meta = _meta(s["date"], s["url"], s["source"])
        evidence = " ".join(f"<mark>{esc(e)}</mark>" for e in s["evidence"][:1])
        lines.append(
            f'<div class="rag-chat-src"><b>[{s["n"]}]</b> {esc(s["title"] or "(untitled)")}'
            f"{' · ' + meta if meta else ''}{cited}<br>{evidence}</div>"
        )
    return "\n".join(lines)


def _time_note(turn: Turn) -> str:
    """The question's time as read, after "Searched for": `· time: since 2026-11-24 (last week)`."""
    label = (turn.get("query_time") or {}).get("label", "")
    return f' · <em>time:</em> <span class="rag-time">{esc(label)}</span>' if label else ""


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
            esc(text[:start])
            + '<span class="rag-here">'
            + highlight(text[start:end], source["evidence"] if source else ())
            + "</span>"
            + esc(text[end:])
        )
    else:
        body = esc(text)
    meta = _meta(info.date, info.url, info.source, info.author, info.path)
    return (
        f'<div class="rag-article"><h3>{esc(info.title or "(untitled)")}</h3>'
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
    where = "the library" if name == rag.DEFAULT_COLLECTION else f"the collection “{esc(name)}”"
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


def collection_choices(r: RAG) -> list[tuple[str, str]]:
    return [
        (f"{c.name} ({c.articles} article{'s' if c.articles != 1 else ''})", c.name) for c in r.collections()
    ]


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
