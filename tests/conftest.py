"""Shared fixtures: every test gets its own index folder; real models load once."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from rag.embedding import Encoder

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "russia-us-rare-earths.txt"
SHARED = ROOT.parent / "shared"


def shared(*parts: str) -> Path:
    """A path under ../shared/, or a skip that names it: CI has the evaluation data beside
    the clone, a user's clone does not. Every test that reads ../shared/ goes through here."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not present (../shared/ holds the evaluation data; a user's clone has none)")
    return path


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the user's environment or the project's ./index."""
    from rag.settings import ENV_VARS

    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAG_INDEX", str(tmp_path / "index"))
    return tmp_path


class FakeEmbedder(Encoder):
    """Deterministic bag-of-words vectors over whitespace tokens: fast, offline, and
    similar texts get similar vectors, which is all the store and chunker tests need."""

    def __init__(
        self, name: str = "fake", dimension: int = 64, max_seq_length: int = 64, backend: str = "torch"
    ) -> None:
        self.name = name
        self.backend = backend
        self.dimension = dimension
        self.max_seq_length = max_seq_length
        self.batch_size = 16

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]

    def count_tokens(self, texts):
        return [len(self.token_offsets(t)) + 2 for t in texts]

    def encode(self, texts, *, progress=None):
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dimension] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0] = 1
        if progress:
            progress(len(texts), len(texts))
        return out / norms

    def encode_query(self, text):
        return self.encode([text])[0]


@pytest.fixture
def fake_embedder():
    return FakeEmbedder()


@pytest.fixture(scope="session")
def real_embedder():
    from rag.embedding import load_embedder
    from rag.settings import Settings

    return load_embedder(Settings())


@pytest.fixture(scope="session")
def real_generator():
    from rag.generation import local_generator
    from rag.settings import Settings

    return local_generator(Settings(seed=0))
