"""The chat completions route, in OpenAI's wire format, JSON or server-sent events."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ...errors import ConfigError, RagError
from ...pipeline import AnswerStream
from ...types import Answer
from ...when import today_of
from ..auth import user_of
from ..errors import ERROR_RESPONSES, MODEL_RESPONSES, ApiError, from_rag_error
from ..pick import Picker
from ..pieces import END, close_pieces, next_piece
from ..schemas import (
    SSE_EVENT_SCHEMA,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    QueryTimeOut,
    SourceOut,
    TimingsOut,
    Usage,
)

log = logging.getLogger(__name__)

STREAM_DOC = (
    "With `stream: true`, server-sent events: `data: {chat.completion.chunk}` lines, the first "
    "with `delta.role`, then `delta.content` pieces; the last chunk has `finish_reason` and the "
    "extra fields `sources`, `found`, `support` and `query` (and `withdrawn` with the `answer` to "
    "show when verification withdrew the streamed text); then `data: [DONE]`. An error after the first "
    'event arrives as `data: {"error": {...}}`.'
)


def add_routes(router: APIRouter, pick: Picker, guarded: list[Any]) -> None:
    """Adds /v1/chat/completions to `router`, behind `guarded`."""
    model_id = pick.model_id

    @router.post(
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
            first = await next_piece(pieces)
        except BaseException:
            await close_pieces(pieces)
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
            while piece is not END:
                if await request.is_disconnected():
                    log.info("client left; stopping its answer")
                    return JSONResponse({}, status_code=499)
                piece = await next_piece(pieces)
        finally:
            await close_pieces(pieces)
        assert stream.answer is not None
        return reply.completion(stream.answer)


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
            while piece is not END:
                # A summary read in parts marks each step with an empty piece: nothing to send.
                if piece:
                    yield self._chunk({"content": piece})
                piece = await next_piece(pieces)
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
            await close_pieces(pieces)
