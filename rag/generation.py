"""The generator: a GGUF model through llama-cpp-python, behind one lock and a bounded queue."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import Busy, ModelError

log = logging.getLogger(__name__)

Message = dict[str, str]


@dataclass(frozen=True)
class Prompt:
    """A chat formatted with the model's own template, as tokens."""

    tokens: list[int]
    stop: list[str]


class Generator(Protocol):
    """What the pipeline needs from a language model."""

    n_ctx: int

    def count_tokens(self, text: str) -> int: ...

    def format(self, messages: Sequence[Message]) -> Prompt: ...

    def stream(self, prompt: Prompt, *, max_tokens: int, temperature: float, seed: int) -> Iterator[str]: ...


class Gate:
    """One request at a time on the model; at most `max_queue` others may wait.

    Shared by everything served from a process (CLI, UI, API), so answers never mix
    and requests past the queue get `Busy` instead of piling up.
    """

    def __init__(self, max_queue: int = 32) -> None:
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._state = threading.Lock()
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._state:
            if self._lock.locked() and self._waiting >= self.max_queue:
                raise Busy(
                    f"the model is busy and {self._waiting} requests are waiting "
                    f"(queue limit {self.max_queue}); try again in a moment"
                )
            self._waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._state:
                self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()


class LlamaCppGenerator:
    """A GGUF model loaded once; its chat template comes from the GGUF itself."""

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int = 4096,
        threads: int = 2,
        n_gpu_layers: int = 0,
        seed: int = 0,
    ) -> None:
        try:
            from llama_cpp import Llama
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as e:  # pragma: no cover - install problem
            raise ModelError(
                f"llama-cpp-python is not importable ({e}); run `make setup` "
                "or `pip install llama-cpp-python`"
            ) from None
        self.path = Path(path)
        try:
            self.llm = Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=n_gpu_layers,
                seed=seed,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"cannot load model {path} ({e}); is it a valid GGUF file?") from None
        self.n_ctx = n_ctx
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelError(f"{path} carries no chat template; use an instruct/chat GGUF with one")
        eos_id, bos_id = self.llm.token_eos(), self.llm.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self.llm._model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=self.llm._model.token_get_text(bos_id) if bos_id != -1 else "",
            stop_token_ids=[eos_id],
        )
        self.name = self.llm.metadata.get("general.name") or self.path.stem

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def format(self, messages: Sequence[Message]) -> Prompt:
        result = self._formatter(messages=list(messages))
        tokens = self.llm.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        stop = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        return Prompt(tokens=tokens, stop=[s for s in stop if s])

    def stream(self, prompt: Prompt, *, max_tokens: int, temperature: float, seed: int) -> Iterator[str]:
        kwargs: dict[str, Any] = {
            "max_tokens": max_tokens,
            "temperature": temperature,
            "seed": seed,
            "stop": prompt.stop,
            "stream": True,
            "repeat_penalty": 1.0,
        }
        if temperature == 0:
            kwargs["top_k"] = 1
        for part in self.llm.create_completion(prompt=prompt.tokens, **kwargs):
            text = part["choices"][0]["text"]  # type: ignore[index]
            if text:
                yield text
