"""/v1/embeddings: the server's embedder for other processes, so one machine (with a GPU, say)
can embed for many ingest workers (`--embed-backend openai --embed-base-url`)."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter

from ..errors import ERROR_RESPONSES, MODEL_RESPONSES, ApiError
from ..pick import Picker
from ..schemas import MAX_EMBED_INPUTS, Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage


def add_routes(router: APIRouter, pick: Picker, guarded: list[Any]) -> None:
    """Adds /v1/embeddings to `router`, behind `guarded`."""

    @router.post(
        "/v1/embeddings",
        response_model=EmbeddingList,
        dependencies=guarded,
        tags=["openai"],
        responses={**ERROR_RESPONSES, 404: MODEL_RESPONSES[404]},
    )
    def embeddings(body: EmbeddingRequest) -> EmbeddingList:
        """Normalised vectors of the texts, by the embedder the server's indexes are built with:
        another process's index built through here is searched as if built in it."""
        r = pick.current()
        embedder = r.embedder
        names = {embedder.name, r.settings.embedder, pick.model_id}
        if body.model and body.model not in names:
            raise ApiError(
                404,
                f"the embedding model {body.model!r} is not served here; this server embeds with "
                f"{embedder.name!r} (give that, or no model)",
                type="not_found_error",
                code="model_not_found",
                param="model",
            )
        texts = body.texts()
        if not texts or len(texts) > MAX_EMBED_INPUTS:
            raise ApiError(
                400, f"give 1 to {MAX_EMBED_INPUTS} texts to embed, not {len(texts)}", param="input"
            )
        vectors = embedder.encode(texts)
        tokens = sum(embedder.count_tokens(texts))
        if body.encoding_format == "base64":
            data: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            data = [v.tolist() for v in vectors]
        return EmbeddingList(
            data=[Embedding(index=i, embedding=e) for i, e in enumerate(data)],
            model=embedder.name,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
