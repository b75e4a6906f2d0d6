"""What the chat does: the `Engine` behind every session, and `Handlers`, the functions that
Gradio calls on each event of the app."""

import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

import rag
from rag import RAG

from .render import (
    ARTICLE_PLACEHOLDER,
    BUSY,
    WAITING,
    Turn,
    article_html,
    chat_choices,
    chat_messages,
    collection_choices,
    esc,
    ingest_report,
    library_choices,
    library_line,
    library_table,
    query_text,
    saved_turns,
    source_choices,
    sources_html,
    timings_line,
    turn_of,
)

log = logging.getLogger(__name__)


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


def _user_of(request: gr.Request) -> str:
    # The login under `rag serve --auth`; everyone is the one user without it.
    return str(getattr(request, "username", None) or "")


def _outputs(
    turns: list[Turn], shown: int | None, status: str, textbox: Any = None, saved: Any = None
) -> tuple[Any, ...]:
    """What a chat event shows, in the order of `build_app`'s `chat_outputs`; `saved` the id
    of the saved chat a finished turn went to."""
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


class Handlers:
    """The app's event handlers around one `RAG`: Gradio passes each its event's inputs in
    order, and a `gr.Request`, `gr.Progress` or event data where its signature asks for one."""

    def __init__(self, rag_: RAG) -> None:
        self.engine = Engine(rag_)
        # The server's own collection, where an empty choice in the menu goes back to.
        self.collection = rag_.settings.collection

    def ask(
        self,
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
        yield from self.answer_turn(
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
        self,
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
            yield _outputs(turns, at if at >= 0 else None, "That question had no time to ignore.")
            return
        yield from self.answer_turn(
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
        self,
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
        r = self.engine.of(request)
        question = (question or "").strip()
        if not question:
            yield _outputs(turns, len(turns) - 1 if turns else None, "Type a question about your articles.")
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
            yield _outputs(turns, len(turns) - 1 if turns else None, f"Filters: {e}")
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
        flag = self.engine.stop_flag(session)
        yield _outputs(turns, index, WAITING if waiting else "", textbox="")
        pieces: Iterator[str] | None = None
        saved: str | None = None
        try:
            # A finished turn is saved in the chat (a new one at its first question).
            conversation = r.chat(chat_id or None, user=_user_of(request), history=history)
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
            yield _outputs(turns, index, WAITING if waiting else "")
            pieces = iter(stream)
            for piece in pieces:
                if flag.is_set():
                    break
                turn["answer"] += piece
                turn["state"] = "streaming"
                # A summary read in parts says how far it is.
                yield _outputs(turns, index, stream.status)
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
            self.engine.forget(session, flag)
        yield _outputs(turns, index, status, saved=saved)

    def summarize_article(
        self,
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
        found = self.engine.of(request).article(article_id) if article_id else None
        if found is None:
            note = (
                "Choose an article to summarize."
                if not article_id
                else "That article is no longer in the library."
            )
            yield _outputs(turns, len(turns) - 1 if turns else None, note)
            return
        yield from self.answer_turn(
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
        self,
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
        chosen = [a for a in (self.engine.of(request).article(i) for i in article_ids or ()) if a is not None]
        if not 2 <= len(chosen) <= rag.MAX_ARTICLES:
            note = f"Choose 2 to {rag.MAX_ARTICLES} articles to compare ({len(chosen)} chosen)."
            yield _outputs(turns, len(turns) - 1 if turns else None, note)
            return
        yield from self.answer_turn(
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

    def stop(self, request: gr.Request) -> str:
        return "Stopping…" if self.engine.stop(request.session_hash or "") else ""

    def new_chat(self) -> tuple[Any, ...]:
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

    def saved_chats(self, current: str | None, request: gr.Request) -> Any:
        """The picker's list, the chat on screen chosen once it is saved."""
        choices = chat_choices(self.engine.of(request), _user_of(request))
        return gr.update(choices=choices, value=current if any(c[1] == current for c in choices) else None)

    def open_chat(self, chosen: str | None, request: gr.Request) -> tuple[Any, ...]:
        """A saved chat back in the chat, its last turn's sources shown; follow-ups go on from it."""
        if not chosen:
            return (*(gr.skip() for _ in range(9)), "Choose a saved chat to open.")
        try:
            chat = self.engine.of(request).chats.get(chosen, user=_user_of(request))
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
            f"Opened “{esc(chat.title)}” ({len(turns)} turn{'s' if len(turns) != 1 else ''}).",
        )

    def rename_chat(self, chosen: str | None, title: str, request: gr.Request) -> tuple[Any, str]:
        if not chosen:
            return gr.skip(), "Choose a saved chat to rename."
        try:
            chat = self.engine.of(request).chats.rename(chosen, title, user=_user_of(request))
        except rag.RagError as e:
            return gr.skip(), f"✗ {e}"
        choices = chat_choices(self.engine.of(request), _user_of(request))
        return gr.update(choices=choices, value=chat.id), "Renamed."

    def delete_chat(
        self, chosen: str | None, current: str | None, request: gr.Request
    ) -> tuple[Any, Any, str]:
        if not chosen:
            return gr.skip(), gr.skip(), "Choose a saved chat to delete."
        try:
            self.engine.of(request).chats.delete(chosen, user=_user_of(request))
        except rag.RagError as e:
            return gr.skip(), gr.skip(), f"✗ {e}"
        # The chat on screen stays readable; its next question starts a new saved chat.
        after = None if current == chosen else current
        choices = chat_choices(self.engine.of(request), _user_of(request))
        return gr.update(choices=choices, value=None), after, "Deleted."

    def pick_turn(self, turns: list[Turn] | None, evt: gr.SelectData) -> tuple[str, str, int | None]:
        turns = turns or []
        _, owners = chat_messages(turns)
        at = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        shown = owners[at] if isinstance(at, int) and 0 <= at < len(owners) else None
        return sources_html(turns, shown), query_text(turns, shown), shown

    def open_source(
        self, turns: list[Turn] | None, evt: gr.EventData, request: gr.Request
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
        found = self.engine.of(request).article(source["article_id"])
        if found is None:
            return '<div class="rag-hint">This article is no longer in the library.</div>', None
        info, text = found
        return article_html(info, text, source), info.id

    def library(self, request: gr.Request) -> tuple[str, dict[str, Any], Any, Any, Any, Any]:
        r = self.engine.of(request)
        return (
            library_line(r),
            library_table(r),
            gr.update(choices=library_choices(r), value=None),
            gr.update(choices=source_choices(r)),
            gr.update(choices=library_choices(r)),
            gr.update(choices=library_choices(r), value=[]),
        )

    def add_articles(
        self,
        files: list[str] | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's way to ask for a progress bar
    ) -> tuple[Any, ...]:
        if not files:
            return (None, "Choose one or more files to add.", *self.library(request))

        def embedded(done: int, total: int) -> None:
            progress((done, total), desc="Embedding passages", unit="passages")

        progress(0, desc=f"Reading {len(files)} file{'s' if len(files) != 1 else ''}")
        r = self.engine.of(request)
        kept = keep_uploads(files, r.settings.folder / "uploads")
        try:
            report = r.ingest([str(f) for f in kept], progress=embedded)
        except rag.RagError as e:
            return (None, f"✗ {e}", *self.library(request))
        for path, _ in report.failed:
            Path(path).unlink(missing_ok=True)
        log.info("ingested %d uploads: %s", len(files), ingest_report(report).replace("\n\n", "; "))
        return (None, ingest_report(report), *self.library(request))

    def add_urls(
        self,
        text: str | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's way to ask for a progress bar
    ) -> tuple[Any, ...]:
        urls = [u.strip() for u in re.split(r"[\s,]+", text or "") if u.strip()]
        if not urls:
            return (text, "Paste the address of a page or of an RSS/Atom feed.", *self.library(request))
        bad = [u for u in urls if not u.lower().startswith(("http://", "https://"))]
        if bad:
            note = f"✗ {esc(bad[0])}: give a full web address, starting with https://"
            return (text, note, *self.library(request))

        def embedded(done: int, total: int) -> None:
            progress((done, total), desc="Embedding passages", unit="passages")

        progress(0, desc=f"Fetching {len(urls)} address{'es' if len(urls) != 1 else ''}")
        try:
            report = self.engine.of(request).ingest(urls, progress=embedded)
        except rag.RagError as e:
            return (text, f"✗ {e}", *self.library(request))
        log.info("ingested %d URLs: %s", len(urls), ingest_report(report).replace("\n\n", "; "))
        return ("" if report.ok else text, ingest_report(report), *self.library(request))

    def refresh(self, seen: str, request: gr.Request) -> tuple[Any, ...]:
        # Another writer (a watch pass, `rag ingest`) committed: show the new library.
        now = str(self.engine.of(request).stats().get("generation", ""))
        if now == seen:
            return (seen, *(gr.skip() for _ in range(5)))
        return (now, *self.library(request))

    def remove_article(self, article_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        if not article_id:
            return ("Choose an article to remove.", *self.library(request))
        r = self.engine.of(request)
        found = r.article(article_id)
        try:
            missing = r.remove([article_id])
        except rag.RagError as e:
            return (f"✗ {e}", *self.library(request))
        if missing:
            return (f"✗ No article with id {article_id} in the library.", *self.library(request))
        title = found[0].title if found else article_id
        return (f"Removed “{title}”.", *self.library(request))

    def load_model(self, model: str, request: gr.Request) -> tuple[str, str]:
        model = (model or "").strip()
        if not model:
            return f"Model: `{self.engine.rag.settings.model}`", library_line(self.engine.of(request))
        try:
            r = self.engine.load_model(model)
        except rag.RagError as e:
            return (
                f"✗ {e}\n\nStill using `{self.engine.rag.settings.model}`.",
                library_line(self.engine.of(request)),
            )
        return f"✓ Model `{r.settings.model}` loaded.", library_line(self.engine.of(request))

    def switch_collection(self, name: str | None, request: gr.Request) -> tuple[Any, ...]:
        """Another collection: a new chat over it, its saved chats, library and filters."""
        try:
            r = self.engine.choose(request, name or self.collection)
        except rag.RagError as e:
            return (*(gr.skip() for _ in range(9)), gr.skip(), f"✗ {e}", *(gr.skip() for _ in range(7)))
        line, table, chosen, _, _, comparing = self.library(request)
        return (
            *self.new_chat(),
            gr.update(choices=chat_choices(r, _user_of(request)), value=None),
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

    def collections_list(self, request: gr.Request) -> Any:
        return gr.update(
            choices=collection_choices(self.engine.rag), value=self.engine.of(request).settings.collection
        )

    def create_collection(self, name: str | None, request: gr.Request) -> tuple[Any, Any, str]:
        name = (name or "").strip()
        if not name:
            return gr.skip(), gr.skip(), "Type a name for the new collection."
        try:
            r = self.engine.rag.create_collection(name)
        except rag.RagError as e:
            return gr.skip(), gr.skip(), f"✗ {e}"
        self.engine.choose(request, r.settings.collection)
        return (
            gr.update(choices=collection_choices(self.engine.rag), value=r.settings.collection),
            "",
            f"Created the collection “{esc(name)}”: add articles to it here.",
        )
