"""Records passed between the modules and returned to callers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .when import QueryTime


@dataclass(frozen=True)
class Article:
    """One article as loaded from a file or a record of a dump."""

    id: str
    text: str
    title: str = ""
    date: str = ""
    url: str = ""
    author: str = ""
    source: str = ""
    path: str = ""


@dataclass(frozen=True)
class Chunk:
    """A span of an article's text: `article.text[start:end] == text`."""

    article_id: str
    ordinal: int
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class ArticleInfo:
    """An indexed article as listed by `rag list`."""

    id: str
    title: str
    date: str
    url: str
    author: str
    source: str
    path: str
    chunks: int
    chars: int
    copies: int = 0


@dataclass(frozen=True)
class Copy:
    """A syndicated copy of an indexed article: the same story from another outlet, stored
    but not indexed, shown under its original as "also published by"."""

    article_id: str
    title: str
    source: str
    url: str
    date: str
    author: str = ""
    path: str = ""
    similarity: float = 0.0


@dataclass(frozen=True)
class Source:
    """A retrieved passage shown with an answer; `n` is its number in the prompt."""

    n: int
    article_id: str
    title: str
    url: str
    date: str
    text: str
    evidence: tuple[str, ...]
    score: float
    cited: bool = False
    source: str = ""
    author: str = ""
    start: int = 0
    end: int = 0
    chunk_id: int = -1
    # Sentences of `text` that read as instructions to the model: not shown to it.
    withheld: tuple[str, ...] = ()
    # The same story as published by other outlets (`rag.dedup`).
    copies: tuple[Copy, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["evidence"] = list(self.evidence)
        d["withheld"] = list(self.withheld)
        d["copies"] = [asdict(c) for c in self.copies]
        return d


@dataclass(frozen=True)
class Timings:
    retrieve_ms: float = 0.0
    first_token_ms: float = 0.0
    total_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_per_s: float = 0.0


SUPPORTED = "supported"
GATE = "gate"
MODEL = "model"
UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Answer:
    """The result of a question: the text, whether the articles held it, and its sources.

    `support` says why: `supported` (the answer was checked against the passages), `gate`
    (the passages were too far from the question to ask the model), `model` (the model said
    the articles do not hold it) or `unsupported: <check>` (the model answered, the check
    failed, and `answer` says so instead; the model's text is kept in `draft`).
    `answerability` is the gate's score for the question (see `rag.support`); `query_time`
    what the question said about time and how it was applied (`rag.when`; None when time
    reading was off)."""

    answer: str
    found: bool
    query: str
    sources: tuple[Source, ...] = ()
    timings: Timings = field(default_factory=Timings)
    support: str = SUPPORTED
    draft: str = ""
    answerability: float = 0.0
    query_time: QueryTime | None = None
    # `answer` (a question answered), `summary` (whole articles summarised, `rag.summary`) or
    # `comparison` (how articles report the same thing, `rag.compare`).
    task: str = "answer"

    @property
    def cited_sources(self) -> tuple[Source, ...]:
        return tuple(s for s in self.sources if s.cited)

    @property
    def outcome(self) -> str:
        """`found`, `unsupported` (the model's answer was withdrawn) or `refused`."""
        if self.found:
            return "found"
        return UNSUPPORTED if self.support.startswith(UNSUPPORTED) else "refused"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Answer:
        """An `Answer` from its `to_dict()` form (as the API sends it, as a chat saves it)."""
        from .when import QueryTime

        known = {f.name for f in fields(Source)}
        sources = tuple(
            Source(
                **{
                    **{k: v for k, v in s.items() if k in known},
                    "evidence": tuple(s.get("evidence") or ()),
                    "withheld": tuple(s.get("withheld") or ()),
                    "copies": tuple(Copy(**c) for c in s.get("copies") or ()),
                }
            )
            for s in data.get("sources") or ()
        )
        timing_fields = {f.name for f in fields(Timings)}
        timings = Timings(**{k: v for k, v in (data.get("timings") or {}).items() if k in timing_fields})
        return cls(
            answer=data.get("answer", ""),
            found=bool(data.get("found")),
            query=data.get("query", ""),
            sources=sources,
            timings=timings,
            support=data.get("support") or ("supported" if data.get("found") else "model"),
            draft=data.get("draft", ""),
            answerability=float(data.get("answerability") or 0.0),
            query_time=QueryTime.from_dict(data["query_time"]) if data.get("query_time") else None,
            task=data.get("task") or "answer",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "found": self.found,
            "support": self.support,
            "query": self.query,
            "sources": [s.to_dict() for s in self.sources],
            "timings": asdict(self.timings),
            "draft": self.draft,
            "answerability": self.answerability,
            "query_time": self.query_time.to_dict() if self.query_time else None,
            "task": self.task,
        }


@dataclass(frozen=True)
class IngestReport:
    """What one ingest did; `failed` holds one (path, reason) per unreadable input.

    `copies` holds (id, id of the indexed article it copies) for each article stored as a
    syndicated copy instead of being indexed; `removed` the articles pruned (their files are
    gone) and `promoted` the copies indexed in place of a removed original."""

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    chunks: int = 0
    seconds: float = 0.0
    copies: tuple[tuple[str, str], ...] = ()
    removed: tuple[str, ...] = ()
    promoted: tuple[str, ...] = ()
    # Ids asked to be removed that were not in the index.
    missing: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.copies or self.removed)

    @property
    def ok(self) -> bool:
        return not self.failed
