"""Saved conversations: every turn's question, answer, sources and timings, in
`chats.sqlite` beside the index's generations (never inside one: a commit would drop it).

Each turn is written in one transaction, so a crash keeps whole turns only. A chat belongs
to the user who started it (the login under `rag serve --auth`; "" without one): the others
neither list, read, rename nor delete it, and cannot write to it.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ChatNotFound, ConfigError, IndexError_
from .generation import Message

log = logging.getLogger(__name__)

CHATS = "chats.sqlite"
TITLE_CHARS = 80
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS chats (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL DEFAULT '',
    title TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS chats_by_user ON chats(user, updated);
CREATE TABLE IF NOT EXISTS turns (
    chat_id TEXT NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    asked REAL NOT NULL,
    PRIMARY KEY (chat_id, n)
);
"""


def new_id() -> str:
    return secrets.token_hex(6)


def check_id(chat_id: str) -> str:
    if not isinstance(chat_id, str) or not _ID.match(chat_id):
        raise ConfigError(
            f"chat id {chat_id!r} is not valid: use 1-64 letters, digits, '-' or '_' (see `rag chats list`)"
        )
    return chat_id


@dataclass(frozen=True)
class ChatTurn:
    """One question and its answer, as `Answer.to_dict()` gave it (`record`)."""

    n: int
    question: str
    record: dict[str, Any]
    asked: float

    @property
    def answer(self) -> str:
        return str(self.record.get("answer", ""))

    @property
    def sources(self) -> list[dict[str, Any]]:
        return list(self.record.get("sources") or [])

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "question": self.question, "asked": _iso(self.asked), **self.record}


@dataclass(frozen=True)
class Chat:
    """A saved conversation; `turns` is empty in listings (`count` says how many)."""

    id: str
    title: str
    user: str
    created: float
    updated: float
    count: int = 0
    turns: tuple[ChatTurn, ...] = ()

    def messages(self) -> list[Message]:
        """The conversation as the pipeline's history: each question and its answer."""
        out: list[Message] = []
        for t in self.turns:
            out += [{"role": "user", "content": t.question}, {"role": "assistant", "content": t.answer}]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "user": self.user,
            "created": _iso(self.created),
            "updated": _iso(self.updated),
            "turns": [t.to_dict() for t in self.turns] if self.turns else [],
            "count": self.count,
        }


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def title_of(question: str) -> str:
    text = " ".join(question.split())
    return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1].rstrip() + "…"


class Chats:
    """The saved chats of one index folder."""

    def __init__(self, index: str | Path) -> None:
        self.path = Path(index) / CHATS
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE: two processes adding to one chat take turns numbers one at a time.
        with self._lock:
            if self._db is None:
                self._db = self._open()
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise IndexError_(
                f"{self.path}: cannot open the saved chats ({e}); move the file away to start afresh"
            ) from None
        return db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _row(self, db: sqlite3.Connection, chat_id: str, user: str) -> tuple[Any, ...]:
        row = db.execute(
            "SELECT id, title, user, created, updated, (SELECT COUNT(*) FROM turns WHERE chat_id = id) "
            "FROM chats WHERE id = ?",
            (check_id(chat_id),),
        ).fetchone()
        if row is None or row[2] != user:
            # Another user's chat is not theirs to know of: the same answer as none.
            raise ChatNotFound(f"no saved chat {chat_id!r} in {self.path}; see `rag chats list`")
        return tuple(row)

    def find(self, chat_id: str, *, user: str = "") -> Chat | None:
        """The user's chat `chat_id`; None when no chat has that id; `ChatNotFound` when
        another user's has."""
        check_id(chat_id)
        if not self.path.exists():
            return None
        with self._tx() as db:
            row = db.execute("SELECT user FROM chats WHERE id = ?", (chat_id,)).fetchone()
        if row is None:
            return None
        return self.get(chat_id, user=user)

    def add(self, chat_id: str, question: str, record: dict[str, Any], *, user: str = "") -> ChatTurn:
        """Append a turn to the chat `chat_id`, created (titled by `question`) when new."""
        now = time.time()
        with self._tx() as db:
            found = db.execute("SELECT user FROM chats WHERE id = ?", (check_id(chat_id),)).fetchone()
            if found is None:
                db.execute(
                    "INSERT INTO chats (id, user, title, created, updated) VALUES (?, ?, ?, ?, ?)",
                    (chat_id, user, title_of(question), now, now),
                )
            elif found[0] != user:
                raise ChatNotFound(f"no saved chat {chat_id!r} in {self.path}; see `rag chats list`")
            (n,) = db.execute(
                "SELECT COALESCE(MAX(n), 0) + 1 FROM turns WHERE chat_id = ?", (chat_id,)
            ).fetchone()
            db.execute(
                "INSERT INTO turns (chat_id, n, question, answer, asked) VALUES (?, ?, ?, ?, ?)",
                (chat_id, n, question, json.dumps(record, ensure_ascii=False), now),
            )
            db.execute("UPDATE chats SET updated = ? WHERE id = ?", (now, chat_id))
        log.debug("chat %s: turn %d saved", chat_id, n)
        return ChatTurn(n, question, record, now)

    def get(self, chat_id: str, *, user: str = "") -> Chat:
        with self._tx() as db:
            cid, title, owner, created, updated, count = self._row(db, chat_id, user)
            rows = db.execute(
                "SELECT n, question, answer, asked FROM turns WHERE chat_id = ? ORDER BY n", (cid,)
            ).fetchall()
        turns = tuple(ChatTurn(n, q, json.loads(a), asked) for n, q, a, asked in rows)
        return Chat(cid, title, owner, created, updated, count, turns)

    def list(self, *, user: str = "") -> list[Chat]:
        """The user's chats, the most recently continued first."""
        if not self.path.exists():
            return []
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, title, user, created, updated, (SELECT COUNT(*) FROM turns WHERE chat_id = id) "
                "FROM chats WHERE user = ? ORDER BY updated DESC, created DESC",
                (user,),
            ).fetchall()
        return [Chat(*row) for row in rows]

    def rename(self, chat_id: str, title: str, *, user: str = "") -> Chat:
        title = " ".join((title or "").split())
        if not title:
            raise ConfigError("a chat's title cannot be empty; give it some words")
        with self._tx() as db:
            self._row(db, chat_id, user)
            db.execute("UPDATE chats SET title = ? WHERE id = ?", (title[:200], chat_id))
        return self.get(chat_id, user=user)

    def delete(self, chat_id: str, *, user: str = "") -> None:
        with self._tx() as db:
            self._row(db, chat_id, user)
            db.execute("DELETE FROM chats WHERE id = ?", (chat_id,))


def markdown(chat: Chat) -> str:
    """A chat as Markdown: each question, its answer with its numbered citations, and the
    sources it was given (cited ones marked)."""
    lines = [f"# {chat.title}", "", f"Saved chat `{chat.id}`, started {_iso(chat.created)}.", ""]
    for t in chat.turns:
        lines += [f"## {t.n}. {t.question}", "", t.answer.strip() or "(no answer)", ""]
        if t.sources:
            lines.append("Sources:")
            lines.append("")
            for s in t.sources:
                title = s.get("title") or s.get("article_id", "")
                where = f" <{s['url']}>" if s.get("url") else ""
                meta = ", ".join(x for x in (s.get("source", ""), s.get("date", "")) if x)
                mark = " (cited)" if s.get("cited") else ""
                lines.append(f"[{s.get('n')}] {title}{' — ' + meta if meta else ''}{where}{mark}")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
