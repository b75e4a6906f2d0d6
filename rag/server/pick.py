"""Which `RAG` answers a request: a collection of the current one, named by the request's
`collection` field or its `model` (`rag/<collection>`)."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import CollectionNotFound, ConfigError
from ..pipeline import RAG
from .errors import ApiError


class Picker:
    """`current` returns the RAG of the moment (a UI that can swap models hands its own);
    `model_id` is the model this server answers as."""

    def __init__(self, current: Callable[[], RAG], model_id: str) -> None:
        self.current = current
        self.model_id = model_id

    def named(self, model: str | None) -> str | None:
        """The collection a model id names (None: the server's own)."""
        model_id = self.model_id
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

    def __call__(self, collection: str | None, model: str | None = None) -> RAG:
        """The RAG of the collection a request names, by its `collection` or its `model`."""
        by_model = self.named(model)
        if collection and by_model and collection != by_model:
            raise ApiError(
                400,
                f"the model {model!r} and the collection {collection!r} name two collections; give one",
                code="invalid_value",
                param="collection",
            )
        name = collection or by_model
        try:
            return self.current().collection(name)
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
