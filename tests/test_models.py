"""Where GGUF files come from: bundled aliases or paths."""

from __future__ import annotations

import pytest

from rag.errors import ModelError
from rag.models import resolve_model


def test_a_bad_model_value_names_itself_and_the_aliases(tmp_path):
    with pytest.raises(ModelError, match=r"'nope'.*smollm2, qwen2\.5-0\.5b"):
        resolve_model("nope")
    text = tmp_path / "model.gguf"
    text.write_text("not a model")
    with pytest.raises(ModelError, match=r"model\.gguf is not a GGUF file"):
        resolve_model(str(text))
