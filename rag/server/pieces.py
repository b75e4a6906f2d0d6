"""An `AnswerStream`'s pieces pulled off the event loop: the model blocks, so each piece is
awaited in a worker thread."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool

END = object()


async def next_piece(pieces: Iterator[str]) -> Any:
    """The next piece, or `END`."""
    return await run_in_threadpool(next, pieces, END)


async def close_pieces(pieces: Iterator[str]) -> None:
    # Closing the generator leaves the Gate at once; shielded, as this runs on cancellation too.
    close = getattr(pieces, "close", None)
    if close is not None:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(close)
