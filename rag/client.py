"""`rag ask` and `rag chat` through a running `rag serve` on the same index: a question from
the terminal then costs retrieval and generation only, not loading torch, the embedder and
the model into a fresh process.

`rag serve` announces itself in the index folder (`SERVER`: its URL, process id and whether
it wants a key or a login; never a secret) and withdraws the file when it stops. `find`
trusts the file only when that process is alive and the URL answers `/health`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .chats import check_id, new_id
from .errors import Busy, RagError
from .types import Answer

if TYPE_CHECKING:
    import httpx

    from .filters import Filters
    from .generation import Message

log = logging.getLogger(__name__)

SERVER = "SERVER"


def announce(index: str | os.PathLike[str], url: str, *, key: bool = False, login: bool = False) -> Path:
    """Write `index/SERVER` for this process (atomically: a reader sees the old or the new)."""
    root = Path(index)
    root.mkdir(parents=True, exist_ok=True)
    path = root / SERVER
    tmp = root / f".{SERVER}.{os.getpid()}"
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid(), "key": key, "login": login}), encoding="utf-8")
    os.replace(tmp, path)
    return path


def withdraw(index: str | os.PathLike[str]) -> None:
    """Remove `index/SERVER` if this process wrote it."""
    path = Path(index) / SERVER
    info = _read(path)
    if info is not None and info.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def find(index: str | os.PathLike[str], *, api_key: str = "", timeout: float = 1.0) -> str | None:
    """The URL of a live `rag serve` on this index that this caller may use, or None: no
    file, a dead process, no answer within `timeout`, a login it wants, or a key it wants
    that the caller lacks."""
    info = _read(Path(index) / SERVER)
    if info is None or not _alive(info.get("pid")) or not isinstance(info.get("url"), str):
        return None
    if info.get("login") or (info.get("key") and not api_key):
        log.info("the server at %s wants a login or a key: answering here", info["url"])
        return None
    import httpx

    url = info["url"].rstrip("/") + "/"
    try:
        ok = httpx.get(url + "health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        ok = False
    if not ok:
        log.info("the server at %s does not answer: answering here", url)
        return None
    return url


class RemoteStream:
    """An answer streaming from a server, read like an `AnswerStream`: iterate it for the text
    pieces; `.answer` holds the `Answer` after the last one."""

    def __init__(self, client: httpx.Client, url: str, body: dict[str, Any], question: str) -> None:
        self._client = client
        self._url = url
        self._body = body
        self.question = question
        self.query = question
        self.answer: Answer | None = None
        self.on_done: Callable[[Answer], None] | None = None

    def __iter__(self) -> Iterator[str]:
        import httpx

        text = ""
        try:
            with self._client.stream("POST", self._url + "v1/chat/completions", json=self._body) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise _refused(resp)
                for line in resp.iter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    if "error" in chunk:
                        raise RagError(f"the server at {self._url} failed: {chunk['error'].get('message')}")
                    choices = chunk.get("choices") or []
                    piece = (choices[0].get("delta") or {}).get("content") if choices else None
                    if piece:
                        text += piece
                        yield piece
                    if choices and choices[0].get("finish_reason"):
                        self._finish(chunk, text)
        except httpx.HTTPError as e:
            raise RagError(f"the server at {self._url} went away mid-answer ({e}); try again") from None
        if self.answer is None:
            raise RagError(f"the server at {self._url} ended the answer without its sources; try again")

    def _finish(self, chunk: dict[str, Any], text: str) -> None:
        withdrawn = bool(chunk.get("withdrawn"))
        self.query = chunk.get("query") or self.question
        self.answer = Answer.from_dict(
            {
                **chunk,
                "answer": chunk.get("answer", "") if withdrawn else text.strip(),
                "draft": text.strip() if withdrawn else "",
            }
        )
        if self.on_done is not None:
            self.on_done(self.answer)


class RemoteSummary:
    """A summary (`POST /v1/summarize`) or a comparison (`route` "v1/compare") made by a
    server, read like an `AnswerStream`: iterating it waits for the whole of it and yields
    it; `.answer` holds the `Answer`."""

    def __init__(
        self, client: httpx.Client, url: str, body: dict[str, Any], route: str = "v1/summarize"
    ) -> None:
        self._client = client
        self._url = url
        self._body = body
        self._route = route
        self.sources: list[Any] = []
        self.progress: tuple[int, int] | None = None
        self.status = ""
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        import httpx

        try:
            resp = self._client.post(self._url + self._route, json=self._body)
        except httpx.HTTPError as e:
            raise RagError(f"the server at {self._url} went away mid-summary ({e}); try again") from None
        if resp.status_code != 200:
            raise _refused(resp)
        self.answer = Answer.from_dict(resp.json())
        if self.answer.found:
            yield self.answer.answer + "\n"


def _refused(resp: httpx.Response) -> RagError:
    try:
        message = resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = resp.text[:300]
    if resp.status_code == 429:
        return Busy(message)
    return RagError(f"the server answered {resp.status_code}: {message}")


class Remote:
    """Questions asked of a running `rag serve` (its `/v1/chat/completions`)."""

    def __init__(
        self, url: str, *, api_key: str = "", timeout: float = 600.0, collection: str | None = None
    ) -> None:
        import httpx

        self.url = url.rstrip("/") + "/"
        # None: the collection the server was started on.
        self.collection = collection
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=httpx.Timeout(timeout, connect=5.0), headers=headers)

    def stream(
        self,
        question: str,
        *,
        history: Sequence[Message] = (),
        k: int | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        filters: Filters | None = None,
        read_time: bool | None = None,
        today: str | None = None,
        conversation: str | None = None,
    ) -> RemoteStream:
        body: dict[str, Any] = {
            "messages": [
                *({"role": m["role"], "content": m["content"]} for m in history),
                {"role": "user", "content": question},
            ],
            "stream": True,
        }
        per_question = (
            ("k", k),
            ("temperature", temperature),
            ("max_tokens", max_tokens),
            ("read_time", read_time),
            ("today", today),
            ("conversation", conversation),
        )
        for name, value in per_question:
            if value is not None:
                body[name] = value
        self._choose(body)
        if filters is not None and filters.active:
            body["filters"] = {k: v for k, v in filters.to_dict().items() if v}
        return RemoteStream(self._client, self.url, body, question)

    def summarize(
        self,
        target: str = "",
        *,
        ids: Sequence[str] = (),
        focus: str = "",
        filters: Filters | None = None,
    ) -> RemoteSummary:
        """Whole articles summarised by the server: `ids`, or those `target` names."""
        body: dict[str, Any] = {"ids": list(ids)} if ids else {"query": target}
        if focus:
            body["focus"] = focus
        if filters is not None and filters.active:
            body["filters"] = {k: v for k, v in filters.to_dict().items() if v}
        return RemoteSummary(self._client, self.url, self._choose(body))

    def compare(
        self, target: str = "", *, ids: Sequence[str] = (), filters: Filters | None = None
    ) -> RemoteSummary:
        """Articles compared by the server: `ids`, or those `target` names."""
        body: dict[str, Any] = {"ids": list(ids)} if ids else {"query": target}
        if filters is not None and filters.active:
            body["filters"] = {k: v for k, v in filters.to_dict().items() if v}
        return RemoteSummary(self._client, self.url, self._choose(body), "v1/compare")

    def _choose(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.collection is not None:
            body["collection"] = self.collection
        return body

    def chat(self, id: str | None = None) -> RemoteChat:
        """A conversation the server saves under `id` (a new one when None)."""
        return RemoteChat(self, id=id)

    def close(self) -> None:
        self._client.close()


class RemoteChat:
    """A conversation with a server, like `ChatSession`: the server saves it under `id` and
    rewrites follow-ups; each question carries the turns so far too, for a server that has
    no saved turns of it yet."""

    def __init__(self, remote: Remote, *, id: str | None = None) -> None:
        self.remote = remote
        self.id = check_id(id) if id is not None else new_id()
        self.history: list[Message] = []

    def stream(self, question: str, **kwargs: Any) -> RemoteStream:
        stream = self.remote.stream(question, history=self.history, conversation=self.id, **kwargs)
        history = self.history

        def record(answer: Answer) -> None:
            history.extend(
                ({"role": "user", "content": question}, {"role": "assistant", "content": answer.answer})
            )

        stream.on_done = record
        return stream
