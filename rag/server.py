"""The HTTP API: grounded answers in the OpenAI chat completions wire format, plus retrieval.

`create_app(rag)` returns a FastAPI app; `rag serve` mounts the chat UI beside it, so both
share one `RAG`: one model, one `Gate` (the lock and the bounded queue). Routes:

- `POST /v1/chat/completions`: the last user message is the question, earlier user and
  assistant messages the conversation (a follow-up is rewritten into a standalone query).
  The reply is the cited answer; `sources` (as in `Answer.to_dict()`), `found`, `support`
  and `query` travel as extra fields, in the final chunk when streaming. A streamed answer
  that verification withdraws ends with a chunk saying so (`withdrawn`) and carrying the
  `answer` to show instead. The caller's system messages
  are ignored: the grounding prompt is this server's.
- `GET /v1/models`, `GET /v1/models/{id}`: the one model this server answers as.
- `POST /v1/retrieve`: passages only, with scores and evidence, for callers with their own model.
- `GET /v1/chats`, `GET|PATCH|DELETE /v1/chats/{id}`: the caller's saved chats (a request
  with a `conversation` id adds its turn to one), as JSON or Markdown, renamed, deleted.
- `GET /health`: liveness and what the index holds; open with an API key alone, but under
  a login it needs the login or the key.

With `login=(user, password)` (`rag serve --auth`) every route, /health included, needs that
login as HTTP Basic credentials, or the API key as a bearer token when there is one.

Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Annotated, Any, Literal

import anyio
from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPBasic, HTTPBearer
from fastapi.security.base import SecurityBase
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .chats import check_id, markdown
from .errors import (
    ArticleNotFound,
    Busy,
    ChatNotFound,
    CollectionNotFound,
    ConfigError,
    FilterError,
    ModelError,
    QuestionError,
    QuestionTooLong,
    RagError,
)
from .filters import Filters
from .generation import BackendError
from .pipeline import RAG, AnswerStream
from .summary import MAX_ARTICLES
from .types import Answer
from .when import today_of

log = logging.getLogger(__name__)

MODEL_ID = "rag"
MAX_BODY_BYTES = 1 << 20
MAX_K = 50
ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
EXAMPLE_QUESTION = "How much aluminum could Russia sell to the United States?"
_END = object()


# -- wire models ------------------------------------------------------------------------------


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


# -- errors -----------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = ErrorDetail(message=message, type=type, param=param, code=code)
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(
            ErrorResponse(error=self.detail).model_dump(), status_code=self.status, headers=self.headers
        )


def from_rag_error(e: RagError) -> ApiError:
    """The HTTP face of each library error."""
    if isinstance(e, FilterError):
        return ApiError(400, str(e), code="invalid_filter", param="filters")
    if isinstance(e, QuestionTooLong):
        return ApiError(400, str(e), code="question_too_long", param="messages")
    if isinstance(e, QuestionError):
        return ApiError(400, str(e), code="invalid_question", param="messages")
    if isinstance(e, ArticleNotFound):
        return ApiError(404, str(e), type="not_found_error", code="article_not_found", param="ids")
    if isinstance(e, CollectionNotFound):
        return ApiError(404, str(e), type="not_found_error", code="collection_not_found", param="collection")
    if isinstance(e, ChatNotFound):
        return ApiError(404, str(e), type="not_found_error", code="chat_not_found", param="conversation")
    if isinstance(e, Busy):
        # Retry-After: an answer takes seconds; the queue frees up about that fast.
        return ApiError(429, str(e), type="rate_limit_error", code="busy", headers={"Retry-After": "2"})
    if isinstance(e, BackendError):
        status, code = (504, "backend_timeout") if e.timed_out else (502, "backend_unavailable")
        return ApiError(status, str(e), type="server_error", code=code)
    if isinstance(e, ModelError):
        return ApiError(503, str(e), type="server_error", code="model_unavailable")
    return ApiError(500, str(e), type="server_error", code=type(e).__name__)


def _validation_error(exc: RequestValidationError) -> ApiError:
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        first = next(err for err in errors if err.get("type") == "json_invalid")
        return ApiError(
            400,
            f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
            code="invalid_json",
        )
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if tuple(first.get("loc", ())) == ("body",):
        # FastAPI reads a body sent without a JSON content type as raw bytes.
        return ApiError(
            400,
            "the body must be a JSON object, sent with Content-Type: application/json",
            code="invalid_json",
        )
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    where = ".".join(loc)
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    missing = first.get("type") == "missing"
    return ApiError(400, message, code="missing_field" if missing else "invalid_value", param=where or None)


_HTTP_CODES = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}


class BodyLimit:
    """Refuses request bodies over `limit` bytes under `prefix` with 413, before any handler
    reads them; the UI's uploads elsewhere keep their own, larger limit."""

    def __init__(self, app: ASGIApp, *, limit: int, prefix: str = "/v1") -> None:
        self.app = app
        self.limit = limit
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        too_large = ApiError(
            413,
            f"the request body is over the limit of {self.limit} bytes",
            code="request_too_large",
        )
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await ApiError(400, "bad Content-Length header", code="invalid_request").response()(
                        scope, receive, send
                    )
                    return
                if declared > self.limit:
                    await too_large.response()(scope, receive, send)
                    return
        # Chunked bodies declare no length: read up to the limit, then replay what was read.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await too_large.response()(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


# -- the app ----------------------------------------------------------------------------------

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request: bad JSON, missing or invalid fields"},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key or login"},
    413: {"model": ErrorResponse, "description": "Request body too large"},
    500: {"model": ErrorResponse, "description": "Server error"},
}
MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown model or collection"},
    429: {"model": ErrorResponse, "description": "The model's queue is full; retry after Retry-After s"},
    502: {"model": ErrorResponse, "description": "The generation server failed or is unreachable"},
    503: {"model": ErrorResponse, "description": "The model cannot be loaded"},
    504: {"model": ErrorResponse, "description": "The generation server did not answer in time"},
}

NO_COLLECTION = {"model": ErrorResponse, "description": "No such collection"}

STREAM_DOC = (
    "With `stream: true`, server-sent events: `data: {chat.completion.chunk}` lines, the first "
    "with `delta.role`, then `delta.content` pieces; the last chunk has `finish_reason` and the "
    "extra fields `sources`, `found`, `support` and `query` (and `withdrawn` with the `answer` to "
    "show when verification withdrew the streamed text); then `data: [DONE]`. An error after the first "
    'event arrives as `data: {"error": {...}}`.'
)


class _Declared(SecurityBase):
    """A security scheme named in the OpenAPI document that checks nothing itself."""

    def __init__(self, scheme: HTTPBearer | HTTPBasic) -> None:
        self.model = scheme.model
        self.scheme_name = scheme.scheme_name

    async def __call__(self, request: Request) -> None:
        return None


Login = tuple[str, str]


def logins_of(login: Login | Sequence[Login] | None) -> list[Login]:
    """One (user, password) pair or several, checked: each needs both, user names distinct."""
    if not login:
        return []
    pairs = [login] if isinstance(login[0], str) else list(login)  # type: ignore[list-item]
    out: list[Login] = []
    for pair in pairs:
        user, password = pair  # type: ignore[misc]
        if not (user and password):
            raise ConfigError("the login needs a user name and a password, e.g. --auth reader:s3cret")
        if any(user == u for u, _ in out):
            raise ConfigError(f"the user {user!r} is given two logins; give each user one --auth")
        out.append((str(user), str(password)))
    return out


def user_of(request: Request) -> str:
    """Whose saved chats a request reads: its login's user ("" for the API key or no login)."""
    return str(getattr(request.state, "user", ""))


def create_app(
    source: RAG | Callable[[], RAG],
    *,
    api_key: str | None = None,
    login: Login | Sequence[Login] | None = None,
    model_id: str = MODEL_ID,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The API over `source`: a `RAG`, or a function returning the current one (a UI that can
    swap models hands its own). `api_key` defaults to the `api_key` setting; empty: no key.
    `login`, the chat's user and password (or several such pairs, one per user), is accepted
    as HTTP Basic credentials on every route, so that a server started with a login is never
    open through its API. Saved chats are each user's own; the API key's holder is the user
    "" (as is everyone on a server without logins)."""
    if isinstance(source, RAG):
        fixed = source

        def current() -> RAG:
            return fixed

    else:
        current = source
    key = current().settings.api_key if api_key is None else api_key
    if key != key.strip():
        raise ConfigError("the API key starts or ends with spaces, which a header cannot carry; remove them")
    logins = logins_of(login)
    login = logins[0] if logins else None
    started = int(time.time())

    app = FastAPI(
        title="rag-articles API",
        summary="Cited answers from your articles, in the OpenAI chat completions format.",
        version="1",
        # Swagger UI and ReDoc load their scripts from a CDN: only the document is served.
        docs_url=None,
        redoc_url=None,
        # A server with a login shows even its API document only to those who have it.
        openapi_url=None if login else "/openapi.json",
    )
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    challenges = [*(["Bearer"] if key else []), *(['Basic realm="rag", charset="UTF-8"'] if login else [])]

    def refuse(message: str, code: str) -> ApiError:
        headers = {"WWW-Authenticate": ", ".join(challenges)}
        return ApiError(401, message, type="authentication_error", code=code, headers=headers)

    def check_credentials(request: Request) -> None:
        # Read by hand, not by FastAPI's HTTPBasic: it answers a malformed header with its own
        # error shape and decodes only ASCII, and RFC 7617 logins are UTF-8.
        scheme, _, value = request.headers.get("authorization", "").strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if key and scheme == "bearer":
            # Starlette reads header bytes as latin-1: compare bytes, so a UTF-8 key matches.
            if secrets.compare_digest(value.encode("latin-1"), key.encode()):
                request.state.user = ""
                return
            raise refuse("the API key is not the one this server was started with", "invalid_api_key")
        if login and scheme == "basic":
            try:
                user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except ValueError:  # not base64 (binascii.Error), not ASCII, or not UTF-8
                user, sep, password = "", "", ""
            if not sep:
                raise refuse("the login is not HTTP Basic: send base64 of USER:PASSWORD", "invalid_login")
            # Every pair compared, both halves, always: the time taken says nothing about
            # which user exists or which half was wrong.
            ok = False
            for name, secret in logins:
                name_ok = secrets.compare_digest(user.encode(), name.encode())
                password_ok = secrets.compare_digest(password.encode(), secret.encode())
                ok |= name_ok and password_ok
            if ok:
                request.state.user = user
                return
            raise refuse("wrong user name or password", "invalid_login")
        if not login:
            raise refuse("this server needs an API key: send `Authorization: Bearer KEY`", "missing_api_key")
        wanted = "the API key as `Authorization: Bearer KEY` or " if key else ""
        raise refuse(
            f"this server needs a login: send {wanted}its user and password as HTTP Basic", "missing_login"
        )

    # The schemes are declared so that the document says what this server accepts (either one);
    # check_credentials does the checking.
    schemes: list[Any] = [
        *([_Declared(HTTPBearer(description="The key given to `rag serve --api-key`."))] if key else []),
        *([_Declared(HTTPBasic(description="The login given to `rag serve --auth`."))] if login else []),
    ]
    guarded = [Depends(check_credentials), *(Security(s) for s in schemes)] if schemes else []
    # A server with a login says nothing without it, /health included; with only a key,
    # /health stays open to probes.
    locked = guarded if login else []

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RagError)
    async def _rag_error(request: Request, exc: RagError) -> JSONResponse:
        error = from_rag_error(exc)
        if error.status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_, code = _HTTP_CODES.get(exc.status_code, ("invalid_request_error", None))
        headers = dict(exc.headers or {})
        return ApiError(exc.status_code, str(exc.detail), type=type_, code=code, headers=headers).response()

    def named(model: str | None) -> str | None:
        """The collection a model id names (None: the server's own)."""
        if not model or model == model_id:
            return None
        prefix, _, name = model.partition("/")
        if prefix == model_id and name:
            return name
        raise ApiError(
            404,
            f"the model {model!r} does not exist here; this server answers as {model_id!r} or "
            f"{model_id + '/<collection>'!r} (see GET /v1/models)",
            type="not_found_error",
            code="model_not_found",
            param="model",
        )

    def pick(collection: str | None, model: str | None = None) -> RAG:
        """The RAG of the collection a request names, by its `collection` or its `model`."""
        by_model = named(model)
        if collection and by_model and collection != by_model:
            raise ApiError(
                400,
                f"the model {model!r} and the collection {collection!r} name two collections; give one",
                code="invalid_value",
                param="collection",
            )
        name = collection or by_model
        try:
            return current().collection(name)
        except CollectionNotFound as e:
            raise ApiError(
                404,
                str(e),
                type="not_found_error",
                code="model_not_found" if by_model and not collection else "collection_not_found",
                param="model" if by_model and not collection else "collection",
            ) from None
        except ConfigError as e:
            raise ApiError(400, str(e), code="invalid_value", param="collection") from None

    @app.get(
        "/health",
        response_model=Health,
        dependencies=locked,
        tags=["service"],
        responses={503: {"model": ErrorResponse}, **({401: ERROR_RESPONSES[401]} if login else {})},
    )
    def health() -> Health:
        r = current()
        try:
            stats = r.stats()
        except RagError as e:
            raise ApiError(503, str(e), type="server_error", code="index_unavailable") from None
        return Health(
            model=model_id,
            backend=r.settings.backend,
            articles=int(stats.get("articles", 0)),
            chunks=int(stats.get("chunks", 0)),
            queue=QueueState(busy=r.gate.busy, waiting=r.gate.waiting, max_queue=r.gate.max_queue),
        )

    def card(name: str = model_id) -> ModelCard:
        return ModelCard(id=name, created=started, owned_by="rag-articles")

    def collections() -> list[CollectionOut]:
        return [
            CollectionOut(name=c.name, model=f"{model_id}/{c.name}", articles=c.articles, chunks=c.chunks)
            for c in current().collections()
        ]

    @app.get(
        "/v1/models",
        response_model=ModelList,
        dependencies=guarded,
        tags=["openai"],
        responses=ERROR_RESPONSES,
    )
    def list_models() -> ModelList:
        """The server's own model id, and one per collection (`rag/<collection>`)."""
        return ModelList(data=[card(), *(card(c.model) for c in collections())])

    @app.get(
        "/v1/models/{model:path}",
        response_model=ModelCard,
        dependencies=guarded,
        tags=["openai"],
        responses={**ERROR_RESPONSES, 404: MODEL_RESPONSES[404]},
    )
    def get_model(model: str) -> ModelCard:
        pick(None, model)
        return card(model)

    @app.get(
        "/v1/collections",
        response_model=CollectionList,
        dependencies=guarded,
        tags=["rag"],
        responses=ERROR_RESPONSES,
    )
    def list_collections() -> CollectionList:
        """The collections under the server's index folder, each answering as its own model."""
        return CollectionList(data=collections())

    @app.post(
        "/v1/retrieve",
        response_model=RetrieveResponse,
        dependencies=guarded,
        tags=["rag"],
        responses={**ERROR_RESPONSES, 404: NO_COLLECTION},
    )
    def retrieve(body: RetrieveRequest) -> RetrieveResponse:
        """The passages a question would be answered from, with scores, evidence and metadata."""
        r = pick(body.collection)
        query = r.check_question(body.query)
        filters = body.filters.to_filters() if body.filters else None
        sources = r.retrieve(query, k=body.k, filters=filters)
        return RetrieveResponse(query=query, data=[SourceOut(**s.to_dict()) for s in sources])

    @app.post(
        "/v1/summarize",
        response_model=SummaryOut,
        dependencies=guarded,
        tags=["rag"],
        responses={
            **ERROR_RESPONSES,
            404: {"model": ErrorResponse, "description": "No article has that id, or no such collection"},
        },
    )
    async def summarize(body: SummarizeRequest, request: Request) -> Any:
        """A summary of whole articles, each point cited with the passage it came from: the
        articles of `ids`, or those `query` names. Long articles are read in parts."""
        r = pick(body.collection)
        if not body.ids and not body.query:
            raise ApiError(400, "give ids (the articles to summarize) or a query naming them", param="ids")
        filters = body.filters.to_filters() if body.filters else None

        def start() -> AnswerStream:
            return r.summarize(body.query or "", ids=body.ids or (), focus=body.focus or "", filters=filters)

        stream: AnswerStream = await run_in_threadpool(start)
        pieces = iter(stream)
        try:
            while await _next(pieces) is not _END:
                if await request.is_disconnected():
                    log.info("client left; stopping its summary")
                    return JSONResponse({}, status_code=499)
        finally:
            await _close(pieces)
        assert stream.answer is not None
        d = stream.answer.to_dict()
        return SummaryOut(**{k: d[k] for k in SummaryOut.model_fields})

    @app.post(
        "/v1/compare",
        response_model=SummaryOut,
        dependencies=guarded,
        tags=["rag"],
        responses={
            **ERROR_RESPONSES,
            404: {"model": ErrorResponse, "description": "No article has that id, or no such collection"},
        },
    )
    def compare(body: CompareRequest) -> Any:
        """How articles report the same thing: where they agree, where their figures, names
        or claims differ, what one alone reports, each point cited with the sentences it
        rests on: the articles of `ids` (2 to 5), or those `query` names. Composed from the
        articles' sentences: no model runs, so it answers at once."""
        r = pick(body.collection)
        if not body.ids and not body.query:
            raise ApiError(400, "give ids (2 to 5 articles to compare) or a query naming them", param="ids")
        filters = body.filters.to_filters() if body.filters else None
        stream = r.compare(body.query or "", ids=body.ids or (), filters=filters)
        for _ in stream:
            pass
        assert stream.answer is not None
        d = stream.answer.to_dict()
        return SummaryOut(**{k: d[k] for k in SummaryOut.model_fields})

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        dependencies=guarded,
        tags=["openai"],
        responses={
            **ERROR_RESPONSES,
            **MODEL_RESPONSES,
            200: {
                "description": "The answer (JSON), or with `stream: true` its pieces as server-sent events. "
                + STREAM_DOC,
                "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
            },
        },
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        """A cited answer from the articles to the last user message."""
        r = pick(body.collection, body.model)
        question, history = split_messages(body.messages)
        max_tokens = body.max_completion_tokens or body.max_tokens
        limit = r.settings.n_ctx // 2
        if max_tokens is not None and max_tokens > limit:
            raise ApiError(
                400,
                f"max_tokens is {max_tokens}, over this server's limit of {limit} (half of n_ctx)",
                code="invalid_value",
                param="max_tokens",
            )
        filters = body.filters.to_filters() if body.filters else None
        if body.today:
            try:
                today_of(body.today)
            except ConfigError as e:
                raise ApiError(400, str(e), code="invalid_value", param="today") from None
        per_question: dict[str, Any] = dict(
            k=body.k,
            temperature=body.temperature,
            max_tokens=max_tokens,
            filters=filters,
            read_time=body.read_time,
            today=body.today,
        )

        def start() -> AnswerStream:
            if body.conversation is None:
                return r.stream(question, history=history, **per_question)
            session = r.chat(body.conversation, user=user_of(request))
            if not session.history:
                session.history = list(history)
            return session.stream(question, **per_question)

        stream: AnswerStream = await run_in_threadpool(start)
        pieces = iter(stream)
        try:
            # The first piece comes after the Gate lets this request through: a full queue
            # is still a proper 429, not an error inside a 200 stream.
            first = await _next(pieces)
        except BaseException:
            await _close(pieces)
            raise
        reply = Reply(body.model or model_id, max_tokens or r.settings.max_tokens, body.conversation)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                reply.events(stream, pieces, first, usage=usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            piece = first
            while piece is not _END:
                if await request.is_disconnected():
                    log.info("client left; stopping its answer")
                    return JSONResponse({}, status_code=499)
                piece = await _next(pieces)
        finally:
            await _close(pieces)
        assert stream.answer is not None
        return reply.completion(stream.answer)

    chat_errors = {
        **ERROR_RESPONSES,
        404: {"model": ErrorResponse, "description": "No such saved chat, or no such collection"},
    }

    @app.get(
        "/v1/chats",
        response_model=ChatList,
        dependencies=guarded,
        tags=["chats"],
        responses={**ERROR_RESPONSES, 404: NO_COLLECTION},
    )
    def list_chats(request: Request, collection: CollectionQuery = None) -> ChatList:
        """The caller's saved chats in the collection, the most recently continued first."""
        chats = pick(collection).chats.list(user=user_of(request))
        return ChatList(data=[ChatSummary(**c.to_dict()) for c in chats])

    @app.get(
        "/v1/chats/{chat_id}",
        response_model=None,
        dependencies=guarded,
        tags=["chats"],
        responses={
            **chat_errors,
            200: {
                "description": "The chat with its turns (JSON), or with `format=markdown` as Markdown.",
                "content": {"application/json": {"schema": ChatOut.model_json_schema()}, "text/markdown": {}},
            },
        },
    )
    def get_chat(
        chat_id: str,
        request: Request,
        format: Literal["json", "markdown"] = "json",
        collection: CollectionQuery = None,
    ) -> Any:
        """A saved chat: every turn's question, answer, sources and timings, as JSON or as
        Markdown (answers with their numbered citations and a sources list)."""
        chat = pick(collection).chats.get(check_chat_id(chat_id), user=user_of(request))
        if format == "markdown":
            return PlainTextResponse(
                markdown(chat),
                media_type="text/markdown; charset=utf-8",
                headers={"Content-Disposition": f'attachment; filename="chat-{chat.id}.md"'},
            )
        return JSONResponse(chat.to_dict())

    @app.patch(
        "/v1/chats/{chat_id}",
        response_model=ChatSummary,
        dependencies=guarded,
        tags=["chats"],
        responses=chat_errors,
    )
    def rename_chat(
        chat_id: str, body: ChatRename, request: Request, collection: CollectionQuery = None
    ) -> ChatSummary:
        chat = pick(collection).chats.rename(check_chat_id(chat_id), body.title, user=user_of(request))
        return ChatSummary(**chat.to_dict())

    @app.delete(
        "/v1/chats/{chat_id}",
        response_model=ChatDeleted,
        dependencies=guarded,
        tags=["chats"],
        responses=chat_errors,
    )
    def delete_chat(chat_id: str, request: Request, collection: CollectionQuery = None) -> ChatDeleted:
        pick(collection).chats.delete(check_chat_id(chat_id), user=user_of(request))
        return ChatDeleted(id=chat_id)

    @app.api_route("/v1/{rest:path}", methods=list(ALL_METHODS), dependencies=locked, include_in_schema=False)
    async def unknown(rest: str, request: Request) -> None:
        # Without this, whatever /v1 does not route falls through to the UI mounted at /,
        # and a CORS preflight to the API would be answered by Gradio's CORS rules.
        # One path may have a route per method (GET, PATCH, DELETE /v1/chats/{id}): all count.
        allowed = {
            method
            for route in app.router.routes
            if route is not unknown_route and route.matches(request.scope)[0] == Match.PARTIAL
            for method in getattr(route, "methods", ()) or ()
        }
        if allowed:
            raise ApiError(
                405,
                f"{request.method} is not allowed on {request.url.path}",
                code="method_not_allowed",
                headers={"Allow": ", ".join(sorted(allowed))},
            )
        raise ApiError(
            404,
            f"there is no {request.url.path} here; see /openapi.json",
            type="not_found_error",
            code="not_found",
        )

    unknown_route = app.router.routes[-1]
    _custom_openapi(app)
    if login:

        @app.get("/openapi.json", dependencies=guarded, include_in_schema=False)
        def document() -> JSONResponse:
            return JSONResponse(app.openapi())

    return app


def check_chat_id(chat_id: str) -> str:
    try:
        return check_id(chat_id)
    except ConfigError as e:
        raise ApiError(404, str(e), type="not_found_error", code="chat_not_found") from None


def split_messages(messages: list[ChatMessage]) -> tuple[str, list[dict[str, str]]]:
    """The question (the last message, a user's) and the user/assistant turns before it."""
    last = messages[-1]
    if last.role != "user":
        raise ApiError(
            400,
            f"the last message must be the user's question, not a {last.role!r} message",
            code="invalid_value",
            param="messages",
        )
    history = [
        {"role": m.role, "content": m.text()}
        for m in messages[:-1]
        if m.role in ("user", "assistant") and m.text().strip()
    ]
    return last.text(), history


async def _next(pieces: Iterator[str]) -> Any:
    return await run_in_threadpool(next, pieces, _END)


async def _close(pieces: Iterator[str]) -> None:
    # Closing the generator leaves the Gate at once; shielded, as this runs on cancellation too.
    close = getattr(pieces, "close", None)
    if close is not None:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(close)


class Reply:
    """Builds the wire objects of one answer."""

    def __init__(self, model: str, max_tokens: int, conversation: str | None = None) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.max_tokens = max_tokens
        self.conversation = conversation

    def _finish_reason(self, answer: Answer) -> Literal["stop", "length"]:
        return "length" if answer.timings.completion_tokens >= self.max_tokens else "stop"

    def _usage(self, answer: Answer) -> Usage:
        t = answer.timings
        return Usage(
            prompt_tokens=t.prompt_tokens,
            completion_tokens=t.completion_tokens,
            total_tokens=t.prompt_tokens + t.completion_tokens,
        )

    def completion(self, answer: Answer) -> ChatCompletion:
        d = answer.to_dict()
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[
                Choice(
                    message=AssistantMessage(content=answer.answer), finish_reason=self._finish_reason(answer)
                )
            ],
            usage=self._usage(answer),
            sources=[SourceOut(**s) for s in d["sources"]],
            found=answer.found,
            support=answer.support,
            task=answer.task,
            query=answer.query,
            query_time=QueryTimeOut(**d["query_time"]) if d["query_time"] else None,
            timings=TimingsOut(**d["timings"]),
            conversation=self.conversation,
        )

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    async def events(
        self, stream: AnswerStream, pieces: Iterator[str], first: Any, *, usage: bool
    ) -> AsyncIterator[str]:
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            piece = first
            while piece is not _END:
                # A summary read in parts marks each step with an empty piece: nothing to send.
                if piece:
                    yield self._chunk({"content": piece})
                piece = await _next(pieces)
            answer = stream.answer
            assert answer is not None
            d = answer.to_dict()
            # Text already sent that verification then withdrew: the last chunk says so.
            withdrawn = {"withdrawn": True, "answer": answer.answer} if answer.draft else {}
            yield self._chunk(
                {},
                self._finish_reason(answer),
                sources=d["sources"],
                found=answer.found,
                support=answer.support,
                task=answer.task,
                query=answer.query,
                query_time=d["query_time"],
                timings=d["timings"],
                **({"conversation": self.conversation} if self.conversation else {}),
                **withdrawn,
            )
            if usage:
                tail = {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": self._usage(answer).model_dump(),
                }
                yield f"data: {json.dumps(tail)}\n\n"
            yield "data: [DONE]\n\n"
        except RagError as e:
            # The status line is long gone: the error travels as an event, which the
            # openai client raises as an APIError.
            log.warning("answer failed mid-stream: %s", e)
            error = from_rag_error(e)
            yield f"data: {json.dumps({'error': error.detail.model_dump()})}\n\n"
        finally:
            await _close(pieces)


def _custom_openapi(app: FastAPI) -> None:
    """Validation errors are answered 400 in OpenAI's shape, not FastAPI's 422: say so. And
    document the streamed chunk, which no route returns as JSON."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                if isinstance(operation, dict):
                    operation.get("responses", {}).pop("422", None)
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        chunk = ChatCompletionChunk.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in chunk.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        schemas["ChatCompletionChunk"] = chunk
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
