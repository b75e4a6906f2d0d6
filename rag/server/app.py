"""The app: the route groups composed under one credential check, the body limit, OpenAI's
error shape, the catch-all under /v1 and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.routing import Match

from ..errors import ConfigError
from ..pipeline import RAG
from .auth import Login, guards, logins_of
from .errors import ApiError, add_handlers
from .limits import MAX_BODY_BYTES, BodyLimit
from .pick import Picker
from .routes import articles, chat, chats, embeddings, meta
from .schemas import MODEL_ID, ChatCompletionChunk

ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


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
    add_handlers(app)

    guard = guards(key, logins)
    guarded, locked = guard
    pick = Picker(current, model_id)
    # Onto the app's own router, in the document's order: an included APIRouter would sit in
    # the route list as one entry, and the catch-all below reads the routes it passes over.
    meta.add_routes(app.router, pick, guard, login=bool(login))
    articles.add_routes(app.router, pick, guarded)
    chat.add_routes(app.router, pick, guarded)
    chats.add_routes(app.router, pick, guarded)
    embeddings.add_routes(app.router, pick, guarded)

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
