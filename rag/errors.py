"""The error hierarchy: every message says what was wrong and what to do."""

from __future__ import annotations


class RagError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(RagError):
    """A setting has a value that cannot work (bad number, missing model file...)."""


class ModelError(RagError):
    """A model (embedder or GGUF) could not be found, verified or loaded."""


class BackendError(ModelError):
    """A model server (generation or embeddings) could not be reached, refused the request,
    or did not answer in time. `timed_out` tells a slow server from a dead or failing one."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        self.timed_out = timed_out
        super().__init__(message)


class InputError(RagError):
    """One input file or record could not be read; the rest of a batch goes on."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class IndexError_(RagError):
    """Base for problems with the index folder (named so as not to shadow IndexError)."""


class IndexNotFound(IndexError_):
    """There is no index at the given folder."""


class IndexCorrupt(IndexError_):
    """A file of the index fails its checksum or cannot be parsed."""


class IndexLocked(IndexError_):
    """Another process is writing to the index."""


class EmbedderMismatch(IndexError_):
    """The index was built with another embedder than the one configured."""


class ChatNotFound(RagError):
    """No saved chat has that id (for this user)."""


class ArticleNotFound(RagError):
    """No indexed article has that id."""


class QuestionError(RagError):
    """The question itself cannot be asked (empty, too long)."""


class QuestionTooLong(QuestionError):
    """The question is longer than the `max_question_chars` setting."""

    def __init__(self, length: int, limit: int) -> None:
        self.length = length
        self.limit = limit
        super().__init__(
            f"question is {length} characters long, over the limit of {limit}; "
            "shorten it or raise the max_question_chars setting"
        )


class FilterError(QuestionError):
    """A metadata filter has a value that cannot be used (a date that is not a date...)."""


class Busy(RagError):
    """Too many requests are already waiting for the model."""


class CollectionNotFound(RagError):
    """No collection of that name under the index root."""
