"""What the server is: /health, the models it answers as, its collections."""

from __future__ import annotations

import time

from fastapi import APIRouter

from ...errors import RagError
from ..auth import Guards
from ..errors import ERROR_RESPONSES, MODEL_RESPONSES, ApiError
from ..pick import Picker
from ..schemas import (
    CollectionList,
    CollectionOut,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    QueueState,
)


def add_routes(router: APIRouter, pick: Picker, guards: Guards, *, login: bool) -> None:
    """Adds /health, /v1/models and /v1/collections to `router`; /health is open but under a
    `login`, which it then needs too."""
    current, model_id, guarded, locked = pick.current, pick.model_id, guards.guarded, guards.locked
    started = int(time.time())

    @router.get(
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

    @router.get(
        "/v1/models",
        response_model=ModelList,
        dependencies=guarded,
        tags=["openai"],
        responses=ERROR_RESPONSES,
    )
    def list_models() -> ModelList:
        """The server's own model id, and one per collection (`rag/<collection>`)."""
        return ModelList(data=[card(), *(card(c.model) for c in collections())])

    @router.get(
        "/v1/models/{model:path}",
        response_model=ModelCard,
        dependencies=guarded,
        tags=["openai"],
        responses={**ERROR_RESPONSES, 404: MODEL_RESPONSES[404]},
    )
    def get_model(model: str) -> ModelCard:
        pick(None, model)
        return card(model)

    @router.get(
        "/v1/collections",
        response_model=CollectionList,
        dependencies=guarded,
        tags=["rag"],
        responses=ERROR_RESPONSES,
    )
    def list_collections() -> CollectionList:
        """The collections under the server's index folder, each answering as its own model."""
        return CollectionList(data=collections())
