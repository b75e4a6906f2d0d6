"""Errors in OpenAI's shape: the library's errors, invalid requests and unrouted paths, each
answered as `{"error": {"message", "type", "param", "code"}}`, and what the document says of them."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    ArticleNotFound,
    BackendError,
    Busy,
    ChatNotFound,
    CollectionNotFound,
    FilterError,
    ModelError,
    QuestionError,
    QuestionTooLong,
    RagError,
)
from .schemas import ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)


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

# The errors the document lists beside a route's answer: every guarded route's, then a
# model's and a collection's.
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


def add_handlers(app: FastAPI) -> None:
    """Answers every error `app` raises in OpenAI's shape, FastAPI's own included."""

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
