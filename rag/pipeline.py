"""The public entry: a `RAG` object holding the models, with ask, stream and chat."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from . import collections as K
from . import compare as C
from . import followup, summary
from . import prompt as P
from . import support as S
from .chats import Chats, check_id, new_id
from .chunking import split_sentences
from .collections import CollectionInfo
from .embedding import Encoder, Progress, load_cross_encoder, load_embedder
from .errors import ArticleNotFound, IndexNotFound, InputError, QuestionError, QuestionTooLong, RagError
from .filters import Filters, article_date
from .followup import FollowUp
from .generation import Gate, Generator, Message, local_generator
from .guard import EXEMPLARS, mask, passages_for_model, planted_instructions, withhold
from .ingest import ingest as _ingest
from .ingest import remove as _remove
from .retrieval import answering, answering_alike, by_date, evidence, newest_first, rerank, search, within
from .settings import Settings
from .store import ChunkRow, Snapshot, open_index
from .store import pointer as store_pointer
from .summary import Task
from .types import (
    GATE,
    MODEL,
    SUPPORTED,
    UNSUPPORTED,
    Answer,
    ArticleInfo,
    Copy,
    IngestReport,
    Source,
    Timings,
)
from .when import QueryTime, read, today_of

log = logging.getLogger(__name__)

EMPTY_INDEX = "The index holds no articles yet. Add some with `rag ingest PATH...` or the Library tab."
EMPTY_COLLECTION = (
    "The collection “{0}” holds no articles yet. Add some with `rag ingest --collection {0} PATH...` "
    "or the Library tab."
)
SENTENCE_CACHE = 2048
NO_MATCH = "No article matches the filters ({}); widen or clear them."
NO_ARTICLE = "No article from {}."
NO_SUBJECT = "No article in the index is about “{}”; try other words, or pick the article in the Library."
WHICH = (
    "Which article? The index holds {}: say what it is about (“summarize the article about ...”) "
    "or press Summarize on one in the Library."
)
NOT_HELD = (
    "The articles do not say: no point of the model's summary could be found in the article's "
    "passages. Open the article in the Library to read it."
)
ONE_ARTICLE = (
    "Only one article is about “{}”: a comparison needs two or more. Summarize it instead, or "
    "choose 2 to {} articles in the Library."
)
COMPARE_IDS = "A comparison reads 2 to {0} articles, {1} given: choose 2 to {0} ids (`rag list` shows them)."
# A recency question ("latest", "now") or a timeline draws this many times k passages. For
# recency, those that answer about as well as the best (`retrieval.answering_alike`) give the
# newest first; for a timeline, those whose own answerability reaches this share of the best
# one's, in date order (both measured in docs/evaluation.md).
TIME_POOL = 3
TIMELINE_BAND = 0.6

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

REWRITE_SYSTEM = (
    "Rewrite the user's last question so that it can be understood without the "
    "conversation: replace pronouns and vague references with the names they stand for. "
    "Reply with the rewritten question only."
)


class RAG:
    """Articles in, cited answers out. Models load on first use, once per object.

    Args:
        settings: a `Settings`; keyword overrides apply on top of it (or of `Settings.load()`).
        embedder / generator: already-loaded models to share (tests, servers).
        gate: the lock and queue in front of the model; share one per process.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        embedder: Encoder | None = None,
        generator: Generator | None = None,
        gate: Gate | None = None,
        **overrides: Any,
    ) -> None:
        base = settings if settings is not None else Settings.load()
        self.settings = base.with_(**overrides)
        self._embedder = embedder
        self._generator = generator
        self._cross_encoder: Any = None
        # Evidence sentences are embedded at retrieval and again, with the answer, after
        # it: the second time comes from here (a few hundred sentences per question at most).
        self._sentence_vectors: OrderedDict[str, Any] = OrderedDict()
        self._sentence_lock = threading.Lock()
        self._exemplar_vectors: Any = None
        self.gate = gate or Gate(self.settings.max_queue)
        self._snapshot: Snapshot | None = None
        self._pointer: str | None = None
        self._load_lock = threading.RLock()
        self._chats: Chats | None = None
        # The collections of one root opened through `collection()` share one family: the
        # models load once, for the first of them that needs them. The family holds the
        # others, not this one: a RAG alone is then in no reference cycle, and is freed (its
        # models and index with it) as soon as it is dropped.
        self._family: dict[str, RAG] = {}
        self._elder: RAG | None = None
        _live.add(self)

    # -- models and index, loaded lazily -------------------------------------------------

    def collection(self, name: str | None = None) -> RAG:
        """The `RAG` of collection `name` under the same index root (None: this one's), with
        the same settings, models and gate; made once and kept. Raises `CollectionNotFound`
        when there is no such collection (`rag.collections.create` makes one)."""
        name = K.check_name(name or self.settings.collection)
        elder = self._elder or self
        if name == elder.settings.collection:
            return elder
        with elder._load_lock:
            member = elder._family.get(name)
            if member is not None:
                return member
            if not K.exists(self.settings.index, name):
                raise K.missing(self.settings.index, name)
            member = RAG(self.settings.with_(collection=name), gate=self.gate)
            member._elder = elder
            elder._family[name] = member
            return member

    def collections(self) -> list[CollectionInfo]:
        """Every collection under this index root, `default` first, with its counts."""
        return K.info(self.settings.index)

    def create_collection(self, name: str) -> RAG:
        """Make an empty collection under this root; returns its `RAG` (see `collection`)."""
        K.create(self.settings.index, name)
        return self.collection(name)

    def delete_collection(self, name: str) -> None:
        """Delete a named collection with its articles and saved chats."""
        K.delete(self.settings.index, name)
        elder = self._elder or self
        with elder._load_lock:
            elder._family.pop(name, None)

    @property
    def embedder(self) -> Encoder:
        if self._elder is not None:
            return self._elder.embedder
        with self._load_lock:
            if self._embedder is None:
                self._embedder = load_embedder(self.settings)
            return self._embedder

    @property
    def generator(self) -> Generator:
        if self._elder is not None:
            return self._elder.generator
        with self._load_lock:
            if self._generator is None and self.settings.backend != "llama-cpp":
                # Another engine generates; retrieval, prompt and citations stay the same.
                from .generation import remote_generator

                self._generator = remote_generator(self.settings)
            if self._generator is None:
                self._generator = local_generator(self.settings)
            return self._generator

    @property
    def cross_encoder(self) -> Any:
        """The re-ranker of the `reranker` setting (None when it is empty)."""
        if self._elder is not None:
            return self._elder.cross_encoder
        with self._load_lock:
            if self._cross_encoder is None and self.settings.reranker:
                self._cross_encoder = load_cross_encoder(self.settings.reranker)
            return self._cross_encoder

    def snapshot(self) -> Snapshot | None:
        """The live generation, reopened when a writer has committed a new one."""
        root = self.settings.folder
        pointer = store_pointer(root)
        if not pointer and not K.exists(self.settings.index, self.settings.collection):
            raise K.missing(self.settings.index, self.settings.collection) from None
        with self._load_lock:
            if self._snapshot is not None and pointer == self._pointer:
                return self._snapshot
            try:
                # Segments the new generation keeps are not read again.
                snap = open_index(root, previous=self._snapshot)
            except IndexNotFound:
                self._snapshot, self._pointer = None, pointer
                return None
            snap.check_embedder(
                self.embedder.name,
                self.embedder.dimension,
                backend=self.embedder.backend,
                agreement=self.embedder.agreement,
            )
            # The previous snapshot is not closed here: other threads may be searching it.
            # It closes its database and frees its vectors when the last of them lets go.
            self._snapshot, self._pointer = snap, pointer
            return snap

    # -- the library -----------------------------------------------------------------------

    def ingest(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        fields: Mapping[str, str] | None = None,
        rebuild: bool = False,
        prune: bool = False,
        progress: Progress | None = None,
        on_error: Callable[[InputError], None] | None = None,
    ) -> IngestReport:
        """Index files, folders, web pages and feeds (http(s) URLs); see `rag.ingest.ingest`."""
        return _ingest(
            paths,
            settings=self.settings,
            embedder=self.embedder,
            fields=fields,
            rebuild=rebuild,
            prune=prune,
            progress=progress,
            on_error=on_error,
        )

    def remove(self, article_ids: Iterable[str]) -> list[str]:
        """Remove articles (or recorded copies); returns the ids that were not found. A
        removed article's syndicated copy is indexed in its place."""
        return _remove(article_ids, settings=self.settings, embedder=lambda: self.embedder)

    def compact(self, *, everything: bool = False) -> str | None:
        """Fold the index's segments together (see `rag.store.compact`): every one but the
        largest, or with `everything` all into one. Returns the new generation, or None when
        there was nothing to fold."""
        from .store import compact, store_of

        if store_of(self.settings.folder) != "faiss":
            return None  # Qdrant folds its own segments
        return compact(self.settings.folder, everything=everything, ann_threshold=self.settings.ann_threshold)

    def articles(self) -> list[ArticleInfo]:
        snap = self.snapshot()
        return snap.articles() if snap else []

    def article(self, article_id: str) -> tuple[ArticleInfo, str] | None:
        snap = self.snapshot()
        return snap.article(article_id) if snap else None

    def stats(self) -> dict[str, Any]:
        snap = self.snapshot()
        if snap is None:
            return {"index": str(self.settings.folder), "articles": 0, "chunks": 0}
        return snap.stats()

    # -- questions ---------------------------------------------------------------------

    def empty_message(self) -> str:
        """What is said when this collection holds no articles."""
        name = self.settings.collection
        return EMPTY_INDEX if name == K.DEFAULT else EMPTY_COLLECTION.format(name)

    def check_question(self, question: str) -> str:
        """The question cleaned of control characters; raises on empty or too long."""
        if not isinstance(question, str):
            raise QuestionError(f"question must be a string, got {type(question).__name__}")
        q = _CONTROL_CHARS.sub(" ", question).strip()
        if not q:
            raise QuestionError("question is empty; type a question about your articles")
        if len(q) > self.settings.max_question_chars:
            raise QuestionTooLong(len(q), self.settings.max_question_chars)
        return q

    def retrieve(self, query: str, *, k: int | None = None, filters: Filters | None = None) -> list[Source]:
        """The top-k passages for `query`, each with its evidence sentences; `filters`
        keeps only passages of the articles that pass them."""
        snap = self.snapshot()
        if snap is None or len(snap) == 0:
            return []
        s = self.settings
        k = k or s.top_k
        allowed = snap.filter_chunks(filters) if filters is not None and filters.active else None
        if allowed is not None and not allowed:
            return []
        qvec = self.embedder.encode_query(query)
        pool = max(k, s.rerank_pool) if s.reranker else k
        hits = search(snap, query, qvec, pool, fusion=s.fusion, allowed=allowed, mmr=s.mmr)
        if s.reranker:
            hits = rerank(self.cross_encoder, query, hits, k)
        texts = [r.text for r, _ in hits]
        withheld = self._withheld([r for r, _ in hits])
        # A withheld sentence is no evidence, however close to the question it is.
        masked = [mask(t, w) for t, w in zip(texts, withheld, strict=True)]
        ev = evidence(self.encode_sentences, qvec, masked, per_text=self.settings.evidence_sentences)
        copies = snap.copies_of(sorted({r.article_id for r, _ in hits}))
        return [
            _source(n, r, score=round(score, 4), evidence=e, withheld=w, copies=copies)
            for n, ((r, score), e, w) in enumerate(zip(hits, ev, withheld, strict=True), start=1)
        ]

    def _withheld(self, rows: Sequence[ChunkRow]) -> list[tuple[str, ...]]:
        """The sentences of each chunk that read as instructions to the model (`rag.guard`)."""
        texts = [r.text for r in rows]
        spans: list[list[tuple[int, int]]] = [[] for _ in texts]
        if self.settings.guard:
            spans = planted_instructions(texts, self.encode_sentences, self._exemplars())
        withheld = [tuple(t[a:b] for a, b in sp) for t, sp in zip(texts, spans, strict=True)]
        for r, w in zip(rows, withheld, strict=True):
            if w:
                log.info("passage of %s: withheld from the model as instructions to it: %r", r.article_id, w)
        return withheld

    def article_sources(self, article_ids: Sequence[str]) -> list[Source]:
        """Every passage of the articles, in article order, numbered from 1 across them."""
        snap = self.snapshot()
        if snap is None:
            return []
        rows: list[ChunkRow] = []
        for aid in article_ids:
            rows += sorted(snap.chunks(snap.filter_chunks(Filters(ids=(aid,)))), key=lambda r: r.ordinal)
        withheld = self._withheld(rows)
        copies = snap.copies_of(list(article_ids))
        return [
            _source(n, r, score=0.0, evidence=(), withheld=w, copies=copies)
            for n, (r, w) in enumerate(zip(rows, withheld, strict=True), start=1)
        ]

    def task_articles(
        self, task: Task, filters: Filters | None = None, *, ids: Sequence[str] = ()
    ) -> tuple[list[str], str, S.Answerability]:
        """The articles a whole-article task reads: `ids` when given, else the article (or,
        `several`, the articles) its subject retrieves, gated like a question; with no
        subject, the only article there is. Returns them with, when there are none, the
        message saying why, and the subject's evidence."""
        none = S.Answerability(0.0, 0.0, 0.0)
        snap = self.snapshot()
        if snap is None or len(snap) == 0:
            return [], self.empty_message(), none
        if ids:
            missing = [i for i in ids if snap.article(i) is None]
            if missing:
                raise ArticleNotFound(f"no article {missing[0]!r} in the index; `rag list` shows the ids")
            chosen = list(dict.fromkeys(ids))
            if task.compare and not C.MIN_ARTICLES <= len(chosen) <= summary.MAX_ARTICLES:
                raise QuestionError(COMPARE_IDS.format(summary.MAX_ARTICLES, len(chosen)))
            return chosen, "", S.Answerability(1.0, 1.0, 1.0)
        active = filters is not None and filters.active
        if not task.subject:
            if active:
                assert filters is not None
                rows = snap.chunks(snap.filter_chunks(filters))
                found = list(dict.fromkeys(r.article_id for r in rows))
                if not found:
                    return [], NO_MATCH.format(filters.describe()), none
            else:
                found = [a.id for a in snap.articles()]
            if task.compare and len(found) < C.MIN_ARTICLES:
                return [], ONE_ARTICLE.format(_title(snap, found[0]), summary.MAX_ARTICLES), none
            if len(found) == 1 or (task.several and len(found) <= summary.MAX_ARTICLES):
                return found, "", S.Answerability(1.0, 1.0, 1.0)
            return [], WHICH.format(len(found)), none
        k = self.settings.top_k * (TIME_POOL if task.several else 1)
        sources = self.retrieve(task.subject, k=k, filters=filters)
        ev = self.answerability(task.subject, sources)
        if not sources or ev.cosine < self.settings.min_score or ev.score < self.settings.min_answerability:
            if not sources and active:
                assert filters is not None
                return [], NO_MATCH.format(filters.describe()), ev
            log.info("no article about %r: %s", task.subject, ev)
            return [], NO_SUBJECT.format(task.subject), ev
        if not task.several:
            return [sources[0].article_id], "", ev
        each = [self.answerability(task.subject, [x]) for x in sources]
        if task.compare:
            # Every article the gate would answer about the subject from: coverage of one
            # story by another outlet may rank well below the first.
            s = self.settings
            band = [
                i for i, a in enumerate(each) if a.cosine >= s.min_score and a.score >= s.min_answerability
            ]
        else:
            band = answering([a.score for a in each], TIMELINE_BAND)
        chosen = [sources[i].article_id for i in band]
        found = list(dict.fromkeys(chosen))[: summary.MAX_ARTICLES]
        if task.compare and len(found) < C.MIN_ARTICLES:
            return [], ONE_ARTICLE.format(task.subject, summary.MAX_ARTICLES), ev
        return found, "", ev

    def query_time(self, question: str, *, today: str | None = None) -> QueryTime:
        """What `question` says about time (`rag.when`), read against `today` (default: the
        `today` setting, else the clock). It is not applied when no indexed article is
        dated: a date range would leave nothing to answer from, and dates cannot order
        undated passages."""
        when = read(question, today_of(self.settings.today if today is None else today))
        if not when.empty:
            snap = self.snapshot()
            if snap is None or not snap.dated():
                when = replace(when, applied=False)
        return when

    def answerability(self, query: str, sources: Sequence[Source]) -> S.Answerability:
        """The gate's evidence that `sources` (from `retrieve`) hold the answer to `query`."""
        snap = self.snapshot()
        if not sources or snap is None:
            return S.Answerability(0.0, 0.0, 0.0)
        return S.answerability(
            query,
            [(x.title, mask(x.text, x.withheld)) for x in sources],
            [x.score for x in sources],
            S.index_rarity(snap),
        )

    def _exemplars(self) -> Any:
        with self._load_lock:
            if self._exemplar_vectors is None:
                self._exemplar_vectors = self.embedder.encode(list(EXEMPLARS))
            return self._exemplar_vectors

    def answer_evidence(self, query: str, answer: str, texts: Sequence[str]) -> list[tuple[str, ...]]:
        """Evidence sentences chosen by the question and the answer together: once the
        answer is known, the sentence that supports it beats one that merely echoes the
        question."""
        plain = re.sub(r"\s*\[\d+(?:\s*[,;]\s*\d+)*\]", "", answer).strip()
        qvec, avec = self.embedder.encode([query, plain])
        both = qvec + avec
        both /= max(float((both**2).sum()) ** 0.5, 1e-9)
        return evidence(self.encode_sentences, both, texts, per_text=self.settings.evidence_sentences)

    def encode_sentences(self, sentences: Sequence[str]) -> Any:
        """Sentence vectors, from the recent-sentence cache where possible."""
        import numpy as np

        with self._sentence_lock:
            known = {t: self._sentence_vectors[t] for t in sentences if t in self._sentence_vectors}
        todo = list(dict.fromkeys(t for t in sentences if t not in known))
        if todo:
            fresh = self.embedder.encode(todo)
            with self._sentence_lock:
                for t, v in zip(todo, fresh, strict=True):
                    known[t] = self._sentence_vectors[t] = v
                while len(self._sentence_vectors) > SENTENCE_CACHE:
                    self._sentence_vectors.popitem(last=False)
        if not sentences:
            return np.zeros((0, self.embedder.dimension), dtype=np.float32)
        return np.vstack([known[t] for t in sentences])

    def stream(
        self,
        question: str,
        *,
        history: Sequence[Message] = (),
        k: int | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        filters: Filters | None = None,
        read_time: bool | None = None,
        today: str | None = None,
    ) -> AnswerStream:
        """Start answering: iterate the result for text pieces, then read `.answer`.
        `filters` restricts the answer to some articles (source, author, dates, ids);
        `read_time` (default: the setting) reads the question's time into them, against
        `today` (default: the setting, else the clock)."""
        q = self.check_question(question)
        task = summary.recognise(q) if self.settings.tasks else None
        if task is not None:
            if not task.subject and history:
                # "Summarize it": the article the conversation is about.
                asked = [m["content"] for m in history if m.get("role") == "user"]
                task = replace(task, subject=followup.subject(asked, ""))
            if task.compare:
                return self.compare(task, filters=filters, question=q)
            return self.summarize(task, filters=filters, max_tokens=max_tokens, question=q)
        follow = self.follow_up(q, history) if history else FollowUp(q, "alone")
        query = follow.query
        when = None
        if self.settings.read_time if read_time is None else read_time:
            if self._embedder is None:
                # Reading dates first loads dateparser (a second or more): meanwhile the
                # embedder loads.
                with ThreadPoolExecutor(1) as pool:
                    future = pool.submit(self.query_time, query, today=today)
                    _ = self.embedder
                    when = future.result()
            else:
                when = self.query_time(query, today=today)
        return AnswerStream(
            self,
            question=q,
            query=query,
            k=k,
            filters=filters,
            when=when,
            follow_up=follow,
            temperature=self.settings.temperature if temperature is None else temperature,
            max_tokens=max_tokens or self.settings.max_tokens,
        )

    def summarize(
        self,
        target: str | Task = "",
        *,
        ids: Sequence[str] = (),
        focus: str = "",
        filters: Filters | None = None,
        max_tokens: int | None = None,
        question: str = "",
    ) -> AnswerStream:
        """Start summarising whole articles: iterate the result for the summary's points as
        they come, each cited, then read `.answer`. `ids` names the articles; else `target`
        is an article id, a request ("summarize what my articles say about X", `rag.summary`)
        or the subject of the article to summarise ("" when the index holds one). `focus`
        keeps to what the article says about it."""
        snap = self.snapshot()
        if isinstance(target, Task):
            task = target
        else:
            text = self.check_question(target) if target.strip() else ""
            if not ids and text and snap is not None and snap.article(text) is not None:
                ids = (text,)
                task = Task()
            else:
                task = summary.recognise(text) or Task(subject=text)
        if focus:
            task = replace(task, focus=focus)
        label = question or (target if isinstance(target, str) and target else "") or "Summarize"
        return AnswerStream(
            self,
            question=label,
            query=task.subject,
            k=None,
            filters=filters,
            temperature=0.0,
            max_tokens=max(max_tokens or 0, summary.TOKENS),
            task=task,
            article_ids=tuple(ids),
        )

    def compare(
        self,
        target: str | Task = "",
        *,
        ids: Sequence[str] = (),
        filters: Filters | None = None,
        question: str = "",
    ) -> AnswerStream:
        """Start comparing how articles report the same thing: iterate the result for the
        comparison's lines (where they agree, where their figures, names or claims differ,
        what one alone reports, each cited), then read `.answer`. `ids` names 2 to 5
        articles; else `target` is a request ("how did outlets report X") or the subject
        whose articles to compare ("" for all, when the index holds 2 to 5)."""
        if isinstance(target, Task):
            task = replace(target, several=True, compare=True)
        else:
            text = self.check_question(target) if target.strip() else ""
            found = summary.recognise(text) if text else None
            subject = found.subject if found is not None and found.compare else text
            task = Task(subject=subject, several=True, compare=True)
        label = question or (target if isinstance(target, str) and target else "") or "Compare"
        return AnswerStream(
            self,
            question=label,
            query=task.subject,
            k=None,
            filters=filters,
            temperature=0.0,
            max_tokens=self.settings.max_tokens,
            task=task,
            article_ids=tuple(ids),
        )

    def ask(self, question: str, **kwargs: Any) -> Answer:
        """Answer a question from the articles, with its sources."""
        s = self.stream(question, **kwargs)
        for _ in s:
            pass
        assert s.answer is not None
        return s.answer

    def chat(
        self,
        id: str | None = None,
        *,
        user: str = "",
        save: bool = True,
        history: Sequence[Message] | None = None,
    ) -> ChatSession:
        """A conversation whose follow-ups are searched as standalone questions, saved in
        the index folder's `chats.sqlite`; with `id`, the saved chat of that id goes on (a new
        id starts one). `history`, when the caller holds the conversation already (the UI),
        is used instead of reading it back."""
        return ChatSession(self, id=id, user=user, save=save, history=history)

    @property
    def chats(self) -> Chats:
        """The saved conversations of this index (`rag.chats`)."""
        with self._load_lock:
            if self._chats is None:
                self._chats = Chats(self.settings.folder)
            return self._chats

    def standalone_query(self, question: str, history: Sequence[Message]) -> str:
        """What to search for a follow-up: see `follow_up`."""
        return self.follow_up(question, history).query

    def follow_up(self, question: str, history: Sequence[Message]) -> FollowUp:
        """A follow-up as a search that stands alone (`rag.followup`): the model's rewrite
        when it is still the same question, else the question with the earlier questions'
        subject (`rewrite` setting `checked`); `model` takes the rewrite unchecked, `none`
        the question as asked."""
        turns = [m for m in history if m.get("role") in ("user", "assistant")][-4:]
        mode = self.settings.rewrite
        asked = [m["content"] for m in history if m.get("role") == "user"]
        if not turns or mode == "none":
            return FollowUp(question, "alone")
        convo = "\n".join(f"{m['role'].capitalize()}: {P.sanitize(m['content'])[:500]}" for m in turns)
        messages = [
            {"role": "system", "content": REWRITE_SYSTEM},
            {"role": "user", "content": f"Conversation:\n{convo}\n\nLast question: {P.sanitize(question)}"},
        ]
        gen = self.generator
        with self.gate.hold():
            out = "".join(
                gen.stream(gen.format(messages), max_tokens=64, temperature=0.0, seed=self.settings.seed)
            )
        rewritten = out.strip().strip('"').strip()
        rewritten = rewritten.split("\n")[0].removeprefix("Rewritten question:")
        rewritten = re.sub(r"\s*\[\d+\]", "", rewritten).strip()
        if mode == "model":
            if not rewritten or len(rewritten) > 3 * len(question) + 200:
                # A small model can ramble: then the previous question gives the context.
                return FollowUp(f"{asked[-1] if asked else ''} {question}".strip(), "model", rewritten)
            return FollowUp(rewritten, "model", rewritten)
        why = followup.check(rewritten, question, [m["content"] for m in turns])
        if not why:
            log.info("follow-up %r rewritten as %r", question, rewritten)
            return FollowUp(rewritten, "rewrite", rewritten)
        query = followup.with_subject(question, asked)
        log.info("follow-up %r: rewrite %r rejected (%s), searched as %r", question, rewritten, why, query)
        return FollowUp(query, "subject", rewritten, why)

    def preload(self) -> None:
        """Ask the kernel to start reading the model file now, while the caller loads the
        embedder and opens the index, so that mapping it later finds it in memory. A hint
        only (no thread: loading llama.cpp redirects the process's stdout and stderr while it
        runs, which would swallow whatever another thread prints)."""
        if self.settings.backend != "llama-cpp" or self._generator is not None:
            return
        from .models import resolve_model

        try:
            fd = os.open(resolve_model(self.settings.model), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)
        except (RagError, OSError, AttributeError) as e:  # reported again on first use
            log.debug("cannot read ahead the model: %s", e)

    def close(self) -> None:
        if self._chats is not None:
            self._chats.close()
            self._chats = None
        if self._snapshot is not None:
            self._snapshot.close()
            self._snapshot = None


class AnswerStream:
    """An answer being generated. Iterate it for the text pieces as they come; after the
    loop, `.answer` holds the full `Answer`. `.sources` is ready before the first piece."""

    def __init__(
        self,
        rag: RAG,
        *,
        question: str,
        query: str,
        k: int | None,
        temperature: float,
        max_tokens: int,
        filters: Filters | None = None,
        when: QueryTime | None = None,
        follow_up: FollowUp | None = None,
        task: Task | None = None,
        article_ids: Sequence[str] = (),
    ) -> None:
        self.rag = rag
        self.question = question
        self.query = query
        self.follow_up = follow_up or FollowUp(query, "alone")
        self.filters = filters
        self.when = when
        # Once the question's dates filter the articles, its words for them ("in 2023") are
        # not to be found in the passages: searched, gated and verified without them.
        self.searched = when.without(query) if when is not None else query
        self._t0 = time.perf_counter()
        # The question's own time narrows the user's filters, unless the two do not meet.
        narrowed = when.filters(filters) if when is not None else filters
        meet = when is None or narrowed is not None
        self.sources: list[Source] = []
        # A whole-article task: the articles it reads, or why there are none.
        self.task = task
        self._given_ids = tuple(article_ids)
        self.articles: list[str] = []
        self.refusal = ""
        self._task_evidence = S.Answerability(0.0, 0.0, 0.0)
        # (sections read, sections) of a summary while it runs; each section read yields a
        # piece, "" when it made no point shown.
        self.progress: tuple[int, int] | None = None
        self._summary_evidence: dict[int, tuple[str, ...]] = {}
        self._said = ""
        self._prompt_tokens = 0
        if task is not None:
            self.articles, self.refusal, self._task_evidence = rag.task_articles(
                task, filters, ids=article_ids
            )
            self.sources = rag.article_sources(self.articles)
        elif meet:
            k = k or rag.settings.top_k
            ordered = when is not None and when.applied and (when.recency or when.timeline)
            self.sources = rag.retrieve(self.searched, k=k * TIME_POOL if ordered else k, filters=narrowed)
            if ordered and self.sources:
                self.sources = self._in_time_order(k)
        self.retrieve_ms = (time.perf_counter() - self._t0) * 1000
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.answer: Answer | None = None
        self.text = ""
        # The model's text when verification withdrew it; the gate's evidence.
        self.draft = ""
        self.evidence = S.Answerability(0.0, 0.0, 0.0)
        # (title, text) of each passage as the model was given it.
        self.given: list[tuple[str, str]] = []
        # The line before each passage saying when its article was published (dated indexes).
        self.headers: list[str] = []
        self.on_done: Callable[[Answer, str], None] | None = None

    @property
    def status(self) -> str:
        """What a summary read in parts is doing ("" otherwise), for a status line."""
        return summary.progress_text(*self.progress) if self.progress is not None else ""

    def _in_time_order(self, k: int) -> list[Source]:
        """The passages of a recency question, the newest that answers first; of a timeline,
        those that answer, in date order. Renumbered as the model will read them."""
        assert self.when is not None
        each = [self.rag.answerability(self.searched, [x]) for x in self.sources]
        if self.when.timeline:
            band = answering([a.score for a in each], TIMELINE_BAND)[:k]
            chosen = by_date([self.sources[i] for i in band], lambda x: x.date)
        else:
            alike = answering_alike([a.cosine for a in each], [a.coverage for a in each])
            chosen = newest_first(self.sources, alike, lambda x: x.date, k)
        return [replace(x, n=n) for n, x in enumerate(chosen, start=1)]

    def __iter__(self) -> Iterator[str]:
        if self.task is not None:
            yield from self._comparison() if self.task.compare else self._summary()
            return
        s = self.rag.settings
        snap = self.rag.snapshot()
        ev = self.evidence = self.rag.answerability(self.searched, self.sources)
        when = self.when
        # "What happened in Riverton yesterday?": the date range chose the passages, and they
        # name what the question names; the model and the check after it still have their say.
        digest = (
            when is not None
            and when.digest
            and when.bounded
            and when.applied
            and S.names_held(self.searched, [(x.title, mask(x.text, x.withheld)) for x in self.sources])
        )
        weak = ev.cosine < s.min_score or ev.score < s.min_answerability
        if not self.sources or (weak and not digest):
            # Evidence too weak to answer from: say so without spending the model's time.
            if snap is None:
                msg = self.rag.empty_message()
            elif not self.sources and when is not None and when.bounded and when.applied:
                msg = NO_ARTICLE.format(when.span())
                if self.filters is not None and self.filters.active:
                    msg = msg[:-1] + f" matching the filters ({self.filters.describe()})."
            elif not self.sources and self.filters is not None and self.filters.active:
                msg = NO_MATCH.format(self.filters.describe())
            else:
                msg = P.REFUSAL
                log.info("refused before the model: %s for %r", ev, self.query)
            self.text = msg
            self._finish(support=GATE, first_ms=0.0, prompt_tokens=0)
            yield msg
            return
        if self.when is not None and self.when.timeline and self.when.applied:
            yield from self._timeline()
            return
        gen = self.rag.generator
        self.sources = within(self.sources, s.margin)
        given = passages_for_model(self.sources, windows=s.windows)
        # Only with time reading on: off, the prompt is the one an undated index gets.
        dated = self.when is not None and snap is not None and snap.dated()
        self.headers = [P.published(x.date, x.source) for x in self.sources] if dated else []
        messages, used = P.build_messages(
            self.query,
            given,
            gen,
            max_tokens=self.max_tokens,
            headers=self.headers,
            today=self.when.today.isoformat() if dated and self.when else "",
        )
        self.sources = self.sources[:used]
        self.given = given[:used]
        prompt = gen.format(messages)
        first_ms = 0.0
        check = P.CitationCheck(used)
        failed: Exception | None = None
        try:
            with self.rag.gate.hold():
                for piece in gen.stream(
                    prompt,
                    max_tokens=self.max_tokens,
                    temperature=self.temperature,
                    seed=self.rag.settings.seed,
                ):
                    if not first_ms:
                        first_ms = (time.perf_counter() - self._t0) * 1000
                    piece = check.feed(piece)
                    if piece:
                        self.text += piece
                        yield piece
        except Exception as e:
            # The engine failed mid-answer: what it had said, held back or not, still goes out
            # before the error does.
            failed = e
        rest = check.flush()
        if rest:
            self.text += rest
            yield rest
        if failed is not None:
            raise failed
        if check.dropped:
            log.warning("answer cited passages it was not given: %s (removed)", sorted(set(check.dropped)))
        self.text = self.text.strip()
        support = MODEL if P.is_refusal(self.text) else SUPPORTED
        if support == SUPPORTED and s.verify and snap is not None:
            support = self._verify(snap)
        if support == SUPPORTED and self.when is not None and self.when.recency and self.headers:
            # "Who is the chief executive now?": the answer says how recent "now" is. The small
            # model, asked to, seldom does (docs/evaluation.md): the cited article's date does.
            note = _as_of(self.text, self.sources)
            if note:
                self.text += note
                yield note
        self._finish(support=support, first_ms=first_ms, prompt_tokens=len(prompt.tokens))

    def _timeline(self) -> Iterator[str]:
        """A timeline answer: each passage's evidence sentence under its article's date,
        oldest first, each cited. Composed, not generated: asked for dated lines, the small
        bundled model wrote a list of citations instead (docs/evaluation.md)."""
        lines = []
        for x in self.sources:
            day = article_date(x.date)
            sentence = " ".join(x.evidence or (x.text,)).strip().rstrip(".")
            lines.append(f"- {day.isoformat() if day else 'undated'}: {sentence} [{x.n}].")
        first_ms = (time.perf_counter() - self._t0) * 1000
        for line in lines:
            self.text += line + "\n"
            yield line + "\n"
        self.text = self.text.strip()
        self._finish(support=SUPPORTED, first_ms=first_ms, prompt_tokens=0)

    def _summary(self) -> Iterator[str]:
        """A summary of whole articles (`rag.summary`): each article read in sections, each
        section's main fact one point, streamed as it is tied to the passage holding it; when
        there are more points than a summary holds (a long article, several), they are
        combined into fewer, and those streamed."""
        assert self.task is not None
        self.evidence = self._task_evidence
        snap = self.rag.snapshot()
        if not self.sources or snap is None:
            self.text = self.refusal or P.REFUSAL
            self._finish(support=GATE, first_ms=0.0, prompt_tokens=0)
            yield self.text
            return
        gen = self.rag.generator
        focus = self.task.focus
        budget = gen.n_ctx - self.max_tokens - summary.OVERHEAD
        each = max(1, summary.POINTS // len(self.articles))
        plan: list[str] = []
        for aid in self.articles:
            mine = [x for x in self.sources if x.article_id == aid]
            found = snap.article(aid)
            if not mine or found is None:
                continue
            if focus and any(summary.about(x.text, focus) for x in mine):
                # "What does the article say about Kyiv?": the passages that name it.
                mine = [x for x in mine if summary.about(x.text, focus)]
            withheld = [w for x in mine for w in x.withheld]
            runs = summary.sections(
                [(x.start, x.end) for x in mine], found[1], gen.count_tokens, budget, each
            )
            plan += [withhold(r, withheld) for r in runs]
        texts = [mask(x.text, x.withheld) for x in self.sources]
        rarity = S.index_rarity(snap)
        held: dict[int, list[str]] = {}
        said: list[str] = []
        first_ms = 0.0
        direct = len(plan) <= summary.POINTS
        notes: list[str] = []
        for step, run in enumerate(plan, start=1):
            out = self._complete(summary.point_messages(run, focus), summary.POINT_TOKENS)
            line = summary.first_sentence(out)
            if P.is_refusal(line):
                # A section that says nothing on the focus.
                line = ""
            said.append(line)
            self.progress = (step, len(plan))
            shown = self._point(line, texts, rarity, held) if direct and line else ""
            if shown:
                first_ms = first_ms or (time.perf_counter() - self._t0) * 1000
                self.text += shown
            elif line:
                notes.append(line)
            yield shown
        if not direct:
            # Notes too many for one summary: combined, in groups while they do not fit.
            for _ in range(summary.ROUNDS):
                if len(notes) <= summary.POINTS:
                    break
                if len(gen.format(summary.reduce_messages(notes, focus)).tokens) <= budget:
                    break
                notes = [
                    self._complete(summary.reduce_messages(g, focus, points=2), 2 * summary.POINT_TOKENS)
                    for g in summary.batches(notes, gen.count_tokens, budget)
                ]
            if len(gen.format(summary.reduce_messages(notes, focus)).tokens) > budget:
                # Still too long after every round: the notes that fit, in article order.
                notes = summary.batches(notes, gen.count_tokens, budget)[0]
            prompt = gen.format(summary.reduce_messages(notes, focus))
            self._prompt_tokens += len(prompt.tokens)
            said = []
            buf = ""
            with self.rag.gate.hold():
                for piece in gen.stream(
                    prompt, max_tokens=self.max_tokens, temperature=0.0, seed=self.rag.settings.seed
                ):
                    said.append(piece)
                    buf += piece
                    while "\n" in buf:
                        line, buf = buf.split("\n", 1)
                        out = self._point(line, texts, rarity, held)
                        if out:
                            first_ms = first_ms or (time.perf_counter() - self._t0) * 1000
                            self.text += out
                            yield out
            out = self._point(buf, texts, rarity, held)
            if out:
                first_ms = first_ms or (time.perf_counter() - self._t0) * 1000
                self.text += out
                yield out
        self._said = ("\n" if direct else "").join(said)
        self.text = self.text.strip()
        support = SUPPORTED
        if not held:
            log.info("summary withdrawn, no point held by the passages: %r", self._said)
            self.draft, self.text = self._said.strip(), NOT_HELD
            support = f"{UNSUPPORTED}: {summary.NOT_HELD_CHECK}"
        self._summary_evidence = {
            self.sources[i].n: _evidence_of(texts[i], points, rarity) for i, points in held.items()
        }
        self._finish(support=support, first_ms=first_ms, prompt_tokens=self._prompt_tokens)

    def _comparison(self) -> Iterator[str]:
        """A comparison of whole articles (`rag.compare`): their sentences about the subject
        matched across articles, what they agree on and where their figures, names or claims
        differ, each line cited. Composed from the articles' own sentences, not generated."""
        assert self.task is not None
        self.evidence = self._task_evidence
        snap = self.rag.snapshot()
        if len(self.articles) < C.MIN_ARTICLES or snap is None:
            self.text = self.refusal or P.REFUSAL
            self._finish(support=GATE, first_ms=0.0, prompt_tokens=0)
            yield self.text
            return
        compared = self._compared(snap)
        if not self._given_ids:
            # Chosen by their subject, the articles that report nothing the others do are
            # about something else that shares its words ("Riverton" in a football report).
            linked = sorted(compared.matched)
            if C.MIN_ARTICLES <= len(linked) < len(self.articles):
                self.articles = [self.articles[i] for i in linked]
                compared = self._compared(snap)
        points = compared.points
        first = {x.article_id: x for x in reversed(self.sources)}
        heads = [first[a] for a in self.articles]
        labels = C.labels(
            [x.title for x in heads], [x.source for x in heads], [x.date for x in heads], self.articles
        )
        if not any(p.kind != "only" for p in points):
            # Nothing the articles share: no comparison, whatever each says alone.
            self.text = P.REFUSAL + (
                f" The {len(self.articles)} articles state nothing in common about “{self.task.subject}”."
                if self.task.subject
                else f" The {len(self.articles)} articles state nothing in common."
            )
            log.info("nothing to compare in %s", self.articles)
            # Decided from the articles before any model, as the gate decides.
            self._finish(support=GATE, first_ms=0.0, prompt_tokens=0)
            yield self.text
            return
        first_ms = (time.perf_counter() - self._t0) * 1000
        head = f"Compared {len(self.articles)} articles: " + "; ".join(
            f"{label} [{first[a].n}]" for label, a in zip(labels, self.articles, strict=True)
        )
        for line in [head, *C.lines(points, labels)]:
            self.text += line + "\n"
            yield line + "\n"
        self.text = self.text.strip()
        evidence: dict[int, list[str]] = {}
        for p in points:
            for c in p.claims:
                evidence.setdefault(c.passage, []).append(c.text)
        for a in self.articles:
            evidence.setdefault(first[a].n, [])
        self._summary_evidence = {n: tuple(dict.fromkeys(v)) for n, v in evidence.items()}
        self._finish(support=SUPPORTED, first_ms=first_ms, prompt_tokens=0)

    def _compared(self, snap: Snapshot) -> C.Comparison:
        """The points of a comparison of `self.articles` (`rag.compare`)."""
        import numpy as np

        assert self.task is not None
        per_article = [
            [(x.n, mask(x.text, x.withheld)) for x in self.sources if x.article_id == aid]
            for aid in self.articles
        ]
        found = C.claims(per_article)
        if not found:
            return C.Comparison((), frozenset())
        texts = []
        for aid, mine in zip(self.articles, per_article, strict=True):
            whole = snap.article(aid)
            withheld = [w for x in self.sources if x.article_id == aid for w in x.withheld]
            texts.append(withhold(whole[1], withheld) if whole else " ".join(t for _, t in mine))
        vectors = np.asarray(self.rag.encode_sentences([c.text for c in found]))
        if self.task.subject:
            subject = self.rag.embedder.encode([self.task.subject])[0]
        else:
            # Without a subject, what the articles have in common is it.
            subject = vectors.mean(axis=0)
            subject /= max(float(np.linalg.norm(subject)), 1e-9)
        return C.compare(found, vectors, vectors @ subject, texts)

    def _complete(self, messages: list[Message], max_tokens: int) -> str:
        """The model's whole reply to `messages` (a step of a summary)."""
        gen = self.rag.generator
        prompt = gen.format(messages)
        self._prompt_tokens += len(prompt.tokens)
        with self.rag.gate.hold():
            return "".join(
                gen.stream(prompt, max_tokens=max_tokens, temperature=0.0, seed=self.rag.settings.seed)
            ).strip()

    def _point(self, line: str, texts: Sequence[str], rarity: S.Rarity, held: dict[int, list[str]]) -> str:
        """One line of the model's summary as it is shown: the point cited with the passage
        holding it, or "" (not a point, a repeat, or held by no passage: dropped)."""
        point = summary.point_of(line)
        if not point or any(point in ps for ps in held.values()):
            return ""
        i, share = summary.held(point, texts, rarity)
        if i < 0 or share < summary.HELD:
            log.info("summary point dropped, held by no passage (best %.2f): %r", share, point)
            return ""
        held.setdefault(i, []).append(point)
        # Cited at its end, as an answer's sentence is; a bullet point needs no full stop.
        return f"- {point.rstrip(' .;,')} [{self.sources[i].n}]\n"

    def _verify(self, snap: Snapshot) -> str:
        """`supported`, or `unsupported: <check>` with the answer withdrawn: the model's text
        moves to `draft`, and the answer says what the closest passage does say."""
        # Checked against what the model was given, not the whole passages, with the line
        # saying when each was published ("As of 12 March 2026, ...").
        heads = self.headers + [""] * (len(self.sources) - len(self.headers))
        passages = [
            (x.n, f"{title}\n{head}".strip(), text)
            for x, (title, text), head in zip(self.sources, self.given, heads, strict=True)
        ]
        # The question's date words, left out of the search, are left out of the answer too.
        said = self.when.without(self.text) if self.when is not None else self.text
        verdict = S.verify(
            self.searched,
            said,
            passages,
            S.index_rarity(snap),
            min_support=self.rag.settings.min_support,
        )
        if verdict.supported:
            return SUPPORTED
        log.info("answer withdrawn (%s): %r", verdict.check, self.text)
        self.draft, self.text = self.text, P.REFUSAL
        closest = self.sources[0] if self.sources else None
        if closest is not None and closest.evidence:
            self.text += f" The closest passage says: “{closest.evidence[0]}” [{closest.n}]"
        return f"{UNSUPPORTED}: {verdict.check}"

    def _finish(self, *, support: str, first_ms: float, prompt_tokens: int) -> None:
        found = support == SUPPORTED
        # A withdrawn answer cites the closest passage it quotes.
        cited = set(P.citations(self.text)) if found or self.draft else set()
        if self.task is not None:
            # A summary shows the passages its points came from, of all those it read.
            mine = self._summary_evidence
            sources = tuple(replace(x, cited=True, evidence=mine[x.n]) for x in self.sources if x.n in mine)
        else:
            evidence = [s.evidence for s in self.sources]
            if found and self.sources:
                masked = [mask(s.text, s.withheld) for s in self.sources]
                evidence = self.rag.answer_evidence(self.searched, self.text, masked)
            sources = tuple(
                Source(**{**s.__dict__, "cited": s.n in cited, "evidence": e})
                for s, e in zip(self.sources, evidence, strict=True)
            )
        total_ms = (time.perf_counter() - self._t0) * 1000
        said = self._said or self.draft or self.text
        completion = self.rag.generator.count_tokens(said) if prompt_tokens else 0
        gen_s = (total_ms - first_ms) / 1000 if first_ms else 0.0
        self.answer = Answer(
            answer=self.text,
            found=found,
            query=self.query,
            sources=sources,
            support=support,
            draft=self.draft,
            answerability=self.evidence.score,
            query_time=self.when,
            task=("comparison" if self.task.compare else "summary") if self.task is not None else "answer",
            timings=Timings(
                retrieve_ms=round(self.retrieve_ms, 1),
                first_token_ms=round(first_ms, 1),
                total_ms=round(total_ms, 1),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion,
                tokens_per_s=round((completion - 1) / gen_s, 1) if gen_s > 0 and completion > 1 else 0.0,
            ),
        )
        if self.on_done is not None:
            self.on_done(self.answer, self.question)


def _source(
    n: int,
    r: ChunkRow,
    *,
    score: float,
    evidence: tuple[str, ...],
    withheld: tuple[str, ...],
    copies: Mapping[str, tuple[Copy, ...]],
) -> Source:
    """The stored chunk `r` as passage `n` of an answer or a summary."""
    return Source(
        n=n,
        article_id=r.article_id,
        title=r.title,
        url=r.url,
        date=r.date,
        text=r.text,
        evidence=evidence,
        score=score,
        source=r.source,
        author=r.author,
        start=r.start,
        end=r.end,
        chunk_id=r.id,
        withheld=withheld,
        copies=copies.get(r.article_id, ()),
    )


def _title(snap: Snapshot, article_id: str) -> str:
    found = snap.article(article_id)
    return (found[0].title if found else "") or article_id


def _evidence_of(text: str, points: Sequence[str], rarity: S.Rarity) -> tuple[str, ...]:
    """The sentence of `text` holding most of each point (in text order, each once)."""
    spans = split_sentences(text)
    sentences = [text[a:b] for a, b in spans]
    chosen = {summary.held(p, sentences, rarity)[0] for p in points}
    return tuple(sentences[i] for i in sorted(chosen) if i >= 0)


def _as_of(answer: str, sources: Sequence[Source]) -> str:
    """`(As of 12 March 2026, the date of [2].)`: the newest article the answer cites."""
    cited = set(P.citations(answer))
    dated = [(day, x.n) for x in sources if x.n in cited and (day := article_date(x.date)) is not None]
    if not dated:
        return ""
    day, n = max(dated)
    return f"\n\n(As of {day.day} {day:%B %Y}, the date of [{n}].)"


class ChatSession:
    """A conversation: each question sees the earlier turns through its standalone query.
    Saved (`rag.chats`), each finished turn in one write, unless `save` is off: `id` names
    it, and a session opened with the id of a saved chat goes on from its turns."""

    def __init__(
        self,
        rag: RAG,
        *,
        id: str | None = None,
        user: str = "",
        save: bool = True,
        history: Sequence[Message] | None = None,
    ) -> None:
        self.rag = rag
        self.user = user
        self.save = save
        self.id = check_id(id) if id is not None else new_id()
        self.history: list[Message] = list(history or ())
        if history is None and save and id is not None:
            saved = rag.chats.find(self.id, user=user)
            if saved is not None:
                self.history = saved.messages()

    def stream(self, question: str, **kwargs: Any) -> AnswerStream:
        s = self.rag.stream(question, history=self.history, **kwargs)
        s.on_done = self._record
        return s

    def ask(self, question: str, **kwargs: Any) -> Answer:
        s = self.stream(question, **kwargs)
        for _ in s:
            pass
        assert s.answer is not None
        return s.answer

    def summarize(self, target: str = "", **kwargs: Any) -> AnswerStream:
        """`RAG.summarize` as a turn of this conversation (the Summarize button's)."""
        s = self.rag.summarize(target, **kwargs)
        s.on_done = self._record
        return s

    def compare(self, target: str = "", **kwargs: Any) -> AnswerStream:
        """`RAG.compare` as a turn of this conversation (the Library's Compare button's)."""
        s = self.rag.compare(target, **kwargs)
        s.on_done = self._record
        return s

    def _record(self, answer: Answer, question: str) -> None:
        if self.save:
            self.rag.chats.add(self.id, question, answer.to_dict(), user=self.user)
        self.history += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer.answer},
        ]

    def reset(self) -> None:
        """Start a new conversation (the one before stays saved)."""
        self.history.clear()
        self.id = new_id()


_default: dict[Settings, RAG] = {}
_default_lock = threading.Lock()
# Every RAG not yet freed, for `_let_go`.
_live: weakref.WeakSet[RAG] = weakref.WeakSet()


@atexit.register
def _let_go() -> None:
    # What is still held at exit (`ask`'s RAGs, a family of collections: a cycle) would
    # otherwise be freed by the interpreter's last garbage collection, after the modules
    # OpenVINO, FAISS and llama.cpp need are torn down: one `rag eval` in about 600 ended
    # in a segfault there, its report written. Dropped now, while all is whole, they are
    # freed as at any other time; a thread still using one keeps what it uses alive.
    _default.clear()
    for rag in list(_live):
        rag._family.clear()
        rag._snapshot = rag._chats = None
        rag._embedder = rag._generator = rag._cross_encoder = None
    gc.collect()


def ask(question: str, *, filters: Filters | Mapping[str, Any] | None = None, **kwargs: Any) -> Answer:
    """Answer `question` from the index, with sources. `filters` (a `Filters` or a dict of
    source/author/since/until/ids) restricts the articles; other keyword arguments are
    settings (index, model, top_k...): the models load once per distinct settings."""
    settings = Settings.load(**kwargs)
    if filters is not None and not isinstance(filters, Filters):
        filters = Filters.from_dict(filters)
    # One RAG per root: the collections under it share its models.
    root = settings.with_(collection=K.DEFAULT)
    with _default_lock:
        rag = _default.get(root)
        if rag is None:
            rag = _default[root] = RAG(root)
    return rag.collection(settings.collection).ask(question, filters=filters)
