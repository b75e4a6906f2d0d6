"""The saved chats: list, read (JSON or Markdown), rename, delete; each user's own."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from ...chats import check_id, markdown
from ...errors import ConfigError
from ..auth import user_of
from ..errors import ERROR_RESPONSES, NO_COLLECTION, ApiError
from ..pick import Picker
from ..schemas import ChatDeleted, ChatList, ChatOut, ChatRename, ChatSummary, CollectionQuery, ErrorResponse


def add_routes(router: APIRouter, pick: Picker, guarded: list[Any]) -> None:
    """Adds /v1/chats and /v1/chats/{chat_id} (GET, PATCH, DELETE) to `router`, each behind `guarded`."""
    chat_errors = {
        **ERROR_RESPONSES,
        404: {"model": ErrorResponse, "description": "No such saved chat, or no such collection"},
    }

    @router.get(
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

    @router.get(
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

    @router.patch(
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

    @router.delete(
        "/v1/chats/{chat_id}",
        response_model=ChatDeleted,
        dependencies=guarded,
        tags=["chats"],
        responses=chat_errors,
    )
    def delete_chat(chat_id: str, request: Request, collection: CollectionQuery = None) -> ChatDeleted:
        pick(collection).chats.delete(check_chat_id(chat_id), user=user_of(request))
        return ChatDeleted(id=chat_id)


def check_chat_id(chat_id: str) -> str:
    """The id, checked: a malformed one names no chat, so it is a 404 like a missing one."""
    try:
        return check_id(chat_id)
    except ConfigError as e:
        raise ApiError(404, str(e), type="not_found_error", code="chat_not_found") from None
