"""The generator: a GGUF model through llama-cpp-python in process, or any OpenAI-compatible
server, behind one lock and a bounded queue."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

from .errors import BackendError, Busy, ConfigError, ModelError

if TYPE_CHECKING:
    import httpx

    from .settings import Settings

log = logging.getLogger(__name__)

Message = dict[str, str]

BACKENDS = ("llama-cpp", "openai")


@dataclass(frozen=True)
class Prompt:
    """A chat ready for the model. In process: formatted with the GGUF's own template, as
    tokens. For a remote server, which applies its own template: the messages, with
    `tokens` only as long as the estimated prompt (its tokenizer is unknown here)."""

    tokens: Sequence[int]
    stop: list[str]
    messages: tuple[Message, ...] = ()


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


def has_amx() -> bool:
    """Whether this CPU has Intel AMX (Sapphire Rapids and later)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_int8" in line.split()
    except OSError:
        pass
    return False


_params_lock = threading.Lock()


def loading_weights() -> contextlib.AbstractContextManager[None]:
    """Around a `llama_cpp.Llama(...)`: on AMX CPUs, `_plain_weights`."""
    return _plain_weights() if has_amx() else contextlib.nullcontext()


@contextlib.contextmanager
def _plain_weights() -> Iterator[None]:
    """Load the weights as the file has them, not repacked into llama.cpp's extra buffer
    types: on AMX CPUs its AMX matrix kernel crashes the process on the first prompt of more
    than one token (seen here with Q4_K_M; ggml-org/llama.cpp#20824). llama-cpp-python does
    not take the model parameter, so its default is changed while the model loads."""
    import llama_cpp.llama as module

    with _params_lock:
        default = module.llama_cpp.llama_model_default_params

        def params() -> Any:
            p = default()
            p.use_extra_bufts = False
            return p

        module.llama_cpp.llama_model_default_params = params
        try:
            log.info("AMX CPU: loading the model without llama.cpp's repacked weight buffers")
            yield
        finally:
            module.llama_cpp.llama_model_default_params = default


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
        flash_attn: bool = True,
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
            with loading_weights():
                self.llm = Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_threads=threads,
                    n_threads_batch=threads,
                    n_gpu_layers=n_gpu_layers,
                    seed=seed,
                    # Measured on 2 cores: prefill 10-20% faster, the same answers.
                    flash_attn=flash_attn,
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
        return Prompt(tokens=tokens, stop=[s for s in stop if s], messages=tuple(dict(m) for m in messages))

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


# Letters in runs, every digit, every other visible character, newlines, runs of spaces, and
# a space before a digit (digit-splitting tokenizers keep it apart): see estimate_tokens.
_PIECES = re.compile(r"[A-Za-z]+|[0-9]|\n| {2,}| (?=[0-9])|\t+|[^\sA-Za-z0-9]")


def estimate_tokens(text: str) -> int:
    """A conservative guess of how many tokens an unknown BPE tokenizer makes of `text`.

    A remote engine's tokenizer is not at hand, and a prompt over its context is refused
    outright, so this errs high: a run of ASCII letters counts one token per 3 letters
    (real vocabularies average about 4 for English, fewer for rare names), every digit and
    punctuation mark one (Llama and Qwen split digits one by one), a lone space nothing (BPE
    merges it into the next word), and a non-ASCII character one token per UTF-8 byte after
    the first (accented letters 1, CJK 2, emoji 3). Against Qwen2.5's tokenizer on the news
    passages of ../shared/eval it counts 1.5 times the real tokens overall and never fewer.
    """
    n = 0
    for m in _PIECES.finditer(text):
        piece = m.group()
        c = piece[0]
        if c.isascii() and c.isalpha():
            n += math.ceil(len(piece) / 3)
        elif c == " ":
            n += math.ceil(len(piece) / 4)
        elif c.isascii():
            n += 1
        else:
            n += max(1, len(c.encode("utf-8")) - 1)
    return n


class OpenAIGenerator:
    """A model served by another engine over the OpenAI chat completions API (llama.cpp's
    server, vLLM, Ollama, TGI...). The messages are the same as in process; the server
    applies its own chat template, so the prompt's length here is an estimate.

    Args:
        base_url: the API root, e.g. `http://127.0.0.1:8080/v1` (`/v1` is added to a bare host).
        model: the served model's name; empty: the first one the server lists.
        api_key: sent as `Authorization: Bearer`, if any.
        timeout: seconds to connect, and to wait for each piece of the answer.
        n_ctx: the server's context window, for the prompt budget.
        extra_body: more request fields for servers that take them (e.g. `repeat_penalty`).
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str = "",
        api_key: str = "",
        timeout: float = 60.0,
        n_ctx: int = 4096,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        parsed = urlparse(base_url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(
                f"llm_base_url must be an http(s) URL like http://127.0.0.1:8080/v1, got {base_url!r}"
            )
        if not timeout or timeout <= 0:
            raise ConfigError(f"llm_timeout must be a positive number of seconds, got {timeout!r}")
        url = base_url.strip().rstrip("/")
        # Every engine serves the API under /v1; a bare host:port means that.
        self.base_url = url if parsed.path.strip("/") else url + "/v1"
        self.model = model
        self.timeout = float(timeout)
        self.n_ctx = n_ctx
        self.extra_body = dict(extra_body or {})
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.model or self.base_url

    def _http(self) -> httpx.Client:
        # httpx is imported here so that in-process use never loads it.
        import httpx

        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(timeout=httpx.Timeout(self.timeout), headers=self._headers)
            return self._client

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def format(self, messages: Sequence[Message]) -> Prompt:
        # Role markers of an unknown template: a generous 8 tokens per message.
        estimate = sum(estimate_tokens(m["content"]) + 8 for m in messages)
        return Prompt(tokens=range(estimate), stop=[], messages=tuple(dict(m) for m in messages))

    def _failure(self, e: Exception, what: str) -> BackendError:
        import httpx

        if isinstance(e, httpx.TimeoutException):
            return BackendError(
                f"the generation server at {self.base_url} did not {what} within {self.timeout:g} s; "
                "is it overloaded? (raise the llm_timeout setting, RAG_LLM_TIMEOUT, --llm-timeout)",
                timed_out=True,
            )
        reason = str(e) or type(e).__name__
        return BackendError(
            f"cannot reach the generation server at {self.base_url} ({reason}); is it running? "
            "(the llm_base_url setting, RAG_LLM_BASE_URL, --llm-base-url)"
        )

    def _refusal(self, response: httpx.Response) -> BackendError:
        try:
            body = response.json()
            error = body.get("error", body) if isinstance(body, dict) else body
            detail = (error.get("message") or error.get("detail")) if isinstance(error, dict) else error
        except ValueError:
            detail = response.text[:300]
        hint = ""
        if response.status_code in (401, 403):
            hint = " (check the llm_api_key setting, RAG_LLM_API_KEY)"
        elif response.status_code == 404:
            hint = " (check llm_base_url ends in /v1 and llm_model names a served model)"
        return BackendError(
            f"the generation server at {self.base_url} answered {response.status_code}: "
            f"{str(detail or '').strip()[:500]}{hint}"
        )

    def model_id(self) -> str:
        """The model to ask for: the configured one, else the first the server lists."""
        if self.model:
            return self.model
        import httpx

        try:
            response = self._http().get(f"{self.base_url}/models")
        except httpx.HTTPError as e:
            raise self._failure(e, "list its models") from None
        if response.status_code != 200:
            raise self._refusal(response)
        try:
            self.model = str(response.json()["data"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise BackendError(
                f"the generation server at {self.base_url} lists no model; set llm_model (RAG_LLM_MODEL)"
            ) from None
        log.info("generation server %s serves %s", self.base_url, self.model)
        return self.model

    def check(self) -> str | None:
        """None when the server answers; else why not (for a warning at start-up)."""
        import httpx

        try:
            response = self._http().get(f"{self.base_url}/models")
        except httpx.HTTPError as e:
            return str(self._failure(e, "answer"))
        if response.status_code != 200:
            return str(self._refusal(response))
        try:
            self.model_id()
        except BackendError as e:
            return str(e)
        return None

    def stream(self, prompt: Prompt, *, max_tokens: int, temperature: float, seed: int) -> Iterator[str]:
        import httpx

        if not prompt.messages:
            raise ModelError("this prompt carries no messages; format it with the same generator")
        body: dict[str, Any] = {
            "model": self.model_id(),
            "messages": list(prompt.messages),
            "stream": True,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": seed,
            **self.extra_body,
        }
        try:
            with self._http().stream("POST", f"{self.base_url}/chat/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise self._refusal(response)
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, event names
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    text = self._piece(data)
                    if text:
                        yield text
        except httpx.HTTPError as e:
            raise self._failure(e, "answer") from None

    def _piece(self, data: str) -> str:
        try:
            chunk = json.loads(data)
        except ValueError:
            raise BackendError(
                f"the generation server at {self.base_url} sent a malformed event: {data[:200]!r}"
            ) from None
        if not isinstance(chunk, dict):
            return ""
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise BackendError(f"the generation server at {self.base_url} failed: {message}")
        choices = chunk.get("choices") or []
        delta = (choices[0].get("delta") or {}) if choices and isinstance(choices[0], dict) else {}
        # Reasoning engines stream their thinking under another key: only the answer counts.
        content = delta.get("content") if isinstance(delta, dict) else None
        return content if isinstance(content, str) else ""


def local_generator(settings: Settings) -> LlamaCppGenerator:
    """The in-process GGUF model of the settings."""
    from .models import resolve_model

    return LlamaCppGenerator(
        resolve_model(settings.model),
        n_ctx=settings.n_ctx,
        threads=settings.threads,
        n_gpu_layers=settings.n_gpu_layers,
        seed=settings.seed,
        flash_attn=settings.flash_attn,
    )


def remote_generator(settings: Settings) -> Generator:
    """The generator of a backend other than the in-process one, from the settings."""
    if settings.backend != "openai":
        raise ConfigError(
            f"unknown backend {settings.backend!r}; choose one of {', '.join(BACKENDS)} "
            "(llama-cpp: the GGUF in process; openai: an OpenAI-compatible server)"
        )
    if not settings.llm_base_url:
        raise ConfigError(
            "the openai backend needs the server's URL: set llm_base_url (RAG_LLM_BASE_URL, "
            "--llm-base-url), e.g. http://127.0.0.1:8080/v1"
        )
    return OpenAIGenerator(
        settings.llm_base_url,
        model=settings.llm_model,
        api_key=settings.llm_api_key,
        timeout=settings.llm_timeout,
        n_ctx=settings.n_ctx,
    )
