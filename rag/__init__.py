"""Chat with your articles, locally: index articles, ask questions, get cited answers.

import rag
rag.RAG(index="index").ingest(["samples/"])
answer = rag.ask("How much aluminum could Russia sell to the United States?")
print(answer.answer, [s.title for s in answer.cited_sources])
"""

from __future__ import annotations

from .chats import Chat, Chats, ChatTurn
from .collections import DEFAULT as DEFAULT_COLLECTION
from .collections import CollectionInfo
from .errors import (
    ArticleNotFound,
    Busy,
    ChatNotFound,
    CollectionNotFound,
    ConfigError,
    EmbedderMismatch,
    FilterError,
    IndexCorrupt,
    IndexLocked,
    IndexNotFound,
    InputError,
    ModelError,
    QuestionError,
    QuestionTooLong,
    RagError,
)
from .filters import Filters
from .followup import FollowUp
from .settings import Settings
from .summary import MAX_ARTICLES, Task, recognise
from .types import Answer, Article, ArticleInfo, Chunk, Copy, IngestReport, Source, Timings
from .when import QueryTime

__all__ = [
    "DEFAULT_COLLECTION",
    "MAX_ARTICLES",
    "RAG",
    "Answer",
    "AnswerStream",
    "Article",
    "ArticleInfo",
    "ArticleNotFound",
    "Busy",
    "Chat",
    "ChatNotFound",
    "ChatSession",
    "ChatTurn",
    "Chats",
    "Chunk",
    "CollectionInfo",
    "CollectionNotFound",
    "ConfigError",
    "Copy",
    "EmbedderMismatch",
    "FilterError",
    "Filters",
    "FollowUp",
    "Gate",
    "IndexCorrupt",
    "IndexLocked",
    "IndexNotFound",
    "IngestReport",
    "InputError",
    "ModelError",
    "QueryTime",
    "QuestionError",
    "QuestionTooLong",
    "RagError",
    "Settings",
    "Source",
    "Task",
    "Timings",
    "Watcher",
    "ask",
    "citations",
    "is_refusal",
    "recognise",
]

__version__ = "0.1.0"

# The pipeline pulls in numpy, faiss and torch: import it on first use so that
# `rag --help` and `import rag` stay fast.
_LAZY = {
    "RAG": "pipeline",
    "AnswerStream": "pipeline",
    "ChatSession": "pipeline",
    "ask": "pipeline",
    "Gate": "generation",
    "Watcher": "watch",
    "citations": "prompt",
    "is_refusal": "prompt",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rag' has no attribute {name!r}")
