"""Whole-article routes and passages: retrieve, summarize, compare."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ...pipeline import AnswerStream
from ..errors import ERROR_RESPONSES, NO_COLLECTION, ApiError
from ..pick import Picker
from ..pieces import END, close_pieces, next_piece
from ..schemas import (
    CompareRequest,
    ErrorResponse,
    RetrieveRequest,
    RetrieveResponse,
    SourceOut,
    SummarizeRequest,
    SummaryOut,
)

log = logging.getLogger(__name__)


def add_routes(router: APIRouter, pick: Picker, guarded: list[Any]) -> None:
    """Adds /v1/retrieve, /v1/summarize and /v1/compare to `router`, each behind `guarded`."""

    @router.post(
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

    @router.post(
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
            while await next_piece(pieces) is not END:
                if await request.is_disconnected():
                    log.info("client left; stopping its summary")
                    return JSONResponse({}, status_code=499)
        finally:
            await close_pieces(pieces)
        assert stream.answer is not None
        d = stream.answer.to_dict()
        return SummaryOut(**{k: d[k] for k in SummaryOut.model_fields})

    @router.post(
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
