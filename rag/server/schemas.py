"""The API's wire models: requests, responses, streamed chunks, and their documentation."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from ..filters import Filters
from ..summary import MAX_ARTICLES

MODEL_ID = "rag"
MAX_K = 50
EXAMPLE_QUESTION = "How much aluminum could Russia sell to the United States?"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = False


class FiltersIn(BaseModel):
    """Which articles may answer (extension); fields AND together, list values OR."""

    model_config = ConfigDict(extra="forbid", strict=True)

    source: list[str] | str | None = Field(None, description="Publisher name(s), matched whole, any case.")
    author: list[str] | str | None = Field(None, description="Name(s) found anywhere in the byline.")
    since: str | None = Field(None, description="Articles dated on or after, YYYY-MM-DD (or YYYY-MM, YYYY).")
    until: str | None = Field(None, description="Articles dated on or before, YYYY-MM-DD (or YYYY-MM, YYYY).")
    ids: list[str] | None = Field(None, description="Article ids, as /v1/retrieve returns them.")

    def to_filters(self) -> Filters:
        return Filters(**self.model_dump(exclude_none=True))


COLLECTION_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,47}$"


def _collection_field() -> Any:
    return Field(
        None,
        pattern=COLLECTION_PATTERN,
        description="Which collection answers (see GET /v1/collections; default: the one the server "
        "was started on).",
        examples=["default"],
    )


# The chat routes' `?collection=`: a chat belongs to the collection it was asked in.
CollectionQuery = Annotated[
    str | None,
    Query(pattern=COLLECTION_PATTERN, description="The chat's collection (default: the server's)."),
]


class ChatCompletionRequest(BaseModel):
    """OpenAI's request; fields it has and this server does not use are accepted and ignored."""

    # Strict: a JSON `false` is no temperature, nor `1.5` a token count.
    model_config = ConfigDict(
        extra="ignore",
        strict=True,
        json_schema_extra={
            "examples": [
                {"model": MODEL_ID, "messages": [{"role": "user", "content": EXAMPLE_QUESTION}]},
                {
                    "model": MODEL_ID,
                    "messages": [{"role": "user", "content": EXAMPLE_QUESTION}],
                    "stream": True,
                    "temperature": 0,
                    "max_tokens": 100,
                    "k": 3,
                },
            ]
        },
    )

    model: str | None = Field(
        None,
        description=f'The served model id: "{MODEL_ID}", or "{MODEL_ID}/<collection>" for one collection '
        "(see GET /v1/models); may be omitted.",
    )
    collection: str | None = _collection_field()
    messages: list[ChatMessage] = Field(
        min_length=1,
        description="The conversation; the last message is the user's question.",
    )
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=1, description="Only one answer per request.")
    k: int | None = Field(None, ge=1, le=MAX_K, description="Passages to retrieve (extension).")
    filters: FiltersIn | None = Field(None, description="Only these articles may answer (extension).")
    read_time: bool | None = Field(
        None,
        description="Read time in the question: 'in 2024', 'last week' filter the articles by date, "
        "'latest' prefers newer ones (extension; default: the server's setting, on).",
    )
    today: str | None = Field(
        None,
        description="The date the question's time is read against, YYYY-MM-DD (extension; default: "
        "the server's clock).",
        examples=["2026-12-01"],
    )
    conversation: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="A saved chat's id (extension): its turns are the conversation (the earlier "
        "messages are used only while it has none), and this turn is saved in it; an id not yet "
        "used starts a chat. See /v1/chats.",
        examples=["3f9a1c2b7d4e"],
    )


class ChatSummary(BaseModel):
    """A saved chat as listed: its title is its first question until renamed."""

    id: str
    title: str
    created: str = Field(description="When it was started (UTC, ISO 8601).")
    updated: str = Field(description="When its last turn was added, or it was renamed.")
    count: int = Field(description="Its turns.")


class ChatList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ChatSummary]


class ChatOut(ChatSummary):
    """A saved chat with its turns: each the question and the answer as `Answer.to_dict()`."""

    turns: list[dict[str, Any]]


class ChatRename(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    title: str = Field(min_length=1, max_length=200)


class ChatDeleted(BaseModel):
    id: str
    object: Literal["chat"] = "chat"
    deleted: bool = True


class QueryTimeOut(BaseModel):
    """What the question said about time, as `Answer.to_dict()["query_time"]`."""

    today: str
    expression: str = Field(description='The words read as a date range ("last week"); empty: none.')
    since: str = Field(description="The range's first day (YYYY-MM-DD); empty: open.")
    until: str = Field(description="The range's last day; empty: open.")
    recency: bool = Field(
        description='The question asks for the newest ("latest", "now"): newer articles preferred.'
    )
    timeline: bool = Field(description="The question asks how something developed: passages in date order.")
    applied: bool = Field(description="False when the range filtered nothing (no indexed article is dated).")
    dates: list[str] = Field(description='The date words themselves ("in 2024"), left out of the search.')
    digest: bool = Field(description='The question asks what happened then ("What happened yesterday?").')
    label: str = Field(description='For people: "since 2026-11-24 (last week)".')


class CopyOut(BaseModel):
    """A syndicated copy of a source's article, as in `Source.copies`."""

    article_id: str
    title: str
    source: str
    url: str
    date: str
    author: str = ""
    path: str = ""
    similarity: float = 0.0


class SourceOut(BaseModel):
    """A retrieved passage, as in `Answer.to_dict()["sources"]`."""

    model_config = ConfigDict(extra="allow")

    n: int
    article_id: str
    title: str
    url: str
    date: str
    text: str
    evidence: list[str]
    score: float
    cited: bool
    source: str = ""
    author: str = ""
    start: int = 0
    end: int = 0
    chunk_id: int = -1
    withheld: list[str] = Field(
        default_factory=list,
        description="Sentences that read as instructions to the model, withheld from it.",
    )
    copies: list[CopyOut] = Field(
        default_factory=list,
        description="The same story published by other outlets (stored, not indexed).",
    )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TimingsOut(BaseModel):
    """Where the time went, as in `Answer.to_dict()["timings"]`."""

    retrieve_ms: float
    first_token_ms: float
    total_ms: float
    prompt_tokens: int
    completion_tokens: int
    tokens_per_s: float


SUPPORT_DOC = (
    "Why the answer stands or not: `supported` (checked against the passages), `gate` (refused "
    "before the model: the passages are too far from the question), `model` (the model said the "
    "articles do not hold it), `unsupported: <check>` (the model's answer failed verification and "
    "was replaced by what the closest passage says)."
)


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    sources: list[SourceOut] = Field(description="The passages behind the answer; `cited` marks those cited.")
    found: bool = Field(description="False when the articles do not hold the answer.")
    support: str = Field(description=SUPPORT_DOC)
    task: str = Field(
        "answer",
        description="`answer`; `summary` when the question asked for whole articles summarized; `comparison` "
        "when it asked how articles report the same thing.",
    )
    query: str = Field(description="What was searched: the question, or its standalone rewrite.")
    query_time: QueryTimeOut | None = Field(
        None, description="The question's time, as read (null: reading off)."
    )
    timings: TimingsOut
    conversation: str | None = Field(None, description="The saved chat this turn was added to.")


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed answer; the last one with a `finish_reason` also
    carries `sources`, `found`, `support` and `query`, and, when verification withdrew the
    streamed text, `withdrawn: true` and the `answer` to show in its place."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    sources: list[SourceOut] | None = None
    found: bool | None = None
    support: str | None = Field(None, description=SUPPORT_DOC)
    query: str | None = None
    query_time: QueryTimeOut | None = None
    conversation: str | None = Field(None, description="The saved chat this turn was added to.")
    withdrawn: bool | None = Field(
        None, description="True when the streamed text was withdrawn: show `answer` instead."
    )
    answer: str | None = Field(None, description="The answer replacing the withdrawn text.")
    timings: TimingsOut | None = None
    usage: Usage | None = None


# Under OpenAPI 3.1 the schema of text/event-stream describes one event: its `data` is a
# chunk or an error as JSON, or the closing [DONE].
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string"},
        "data": {
            "anyOf": [
                {"const": "[DONE]"},
                {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "anyOf": [
                            {"$ref": "#/components/schemas/ChatCompletionChunk"},
                            {"$ref": "#/components/schemas/ErrorResponse"},
                        ]
                    },
                },
            ]
        },
    },
}


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


MAX_EMBED_INPUTS = 2048


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request: texts in, one vector each, from the server's embedder."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str] = Field(
        description=f"A text, or up to {MAX_EMBED_INPUTS} texts, to embed (token arrays are not taken).",
        examples=[["Russia could sell aluminium to the United States."]],
    )
    model: str | None = Field(
        None,
        description=f'The embedder name the index records (`rag stats`), or "{MODEL_ID}"; may be omitted.',
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`base64`: each vector as little-endian float32 bytes, base64-encoded."
    )
    user: str | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="The normalised vector (or its base64 bytes).")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str = Field(description="The embedder that made the vectors (as an index records it).")
    usage: EmbeddingUsage


class RetrieveRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore", strict=True, json_schema_extra={"examples": [{"query": EXAMPLE_QUESTION, "k": 3}]}
    )

    query: str = Field(min_length=1, description="What to search the articles for.")
    k: int | None = Field(None, ge=1, le=MAX_K, description="How many passages (default: the top_k setting).")
    filters: FiltersIn | None = Field(None, description="Only passages of these articles.")
    collection: str | None = _collection_field()


class SummarizeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"query": "what do my articles say about rare earth metals"}, {"ids": ["a1b2c3"]}]
        },
    )

    ids: list[str] | None = Field(
        None, min_length=1, max_length=MAX_ARTICLES, description="The articles to summarize, by id."
    )
    query: str | None = Field(
        None,
        min_length=1,
        description="Without ids: a request ('the article about X', 'what do my articles say about Y') or "
        "the subject of the article to summarize.",
    )
    focus: str | None = Field(None, description="Keep to what the articles say about this.")
    filters: FiltersIn | None = Field(None, description="Only these articles may be chosen.")
    collection: str | None = _collection_field()


class CompareRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"query": "how did outlets report the rail strike"}, {"ids": ["a1b2c3", "d4e5f6"]}]
        },
    )

    ids: list[str] | None = Field(
        None, min_length=2, max_length=MAX_ARTICLES, description="The articles to compare, by id."
    )
    query: str | None = Field(
        None,
        min_length=1,
        description="Without ids: a request ('how did outlets report X') or the subject whose articles to "
        "compare.",
    )
    filters: FiltersIn | None = Field(None, description="Only these articles may be chosen.")
    collection: str | None = _collection_field()


class SummaryOut(BaseModel):
    """A summary or a comparison of whole articles, as in `Answer.to_dict()`: each point cited."""

    answer: str
    found: bool
    support: str = Field(description=SUPPORT_DOC)
    task: Literal["summary", "comparison"] = "summary"
    query: str = Field(description="The subject the articles were chosen by (empty: given by id).")
    sources: list[SourceOut] = Field(description="The passages the points were found in.")
    draft: str = Field(description="The model's summary when none of its points was found in a passage.")
    timings: TimingsOut


class CollectionOut(BaseModel):
    name: str
    object: Literal["collection"] = "collection"
    model: str = Field(description="The model id that answers from it alone.")
    articles: int
    chunks: int


class CollectionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CollectionOut]


class RetrieveResponse(BaseModel):
    object: Literal["list"] = "list"
    query: str
    data: list[SourceOut]


class QueueState(BaseModel):
    busy: bool
    waiting: int
    max_queue: int


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    backend: str
    articles: int
    chunks: int
    queue: QueueState
