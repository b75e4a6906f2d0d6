"""The index folder on disk: the CURRENT pointer, generation manifests, write-once segment
folders, durable writes, checksums, recovery and the one-writer lock.

Layout::

    DIR/CURRENT                  "gen-000007 <sha256 of its manifest>", replaced atomically
    DIR/gen-000007/manifest.json the live generation: its segments (each with the checksums
                                 of its files and the articles it no longer serves), counts,
                                 the embedder and chunking that built it, feed state
    DIR/gen-000006/              the previous generation, kept until the next commit
    DIR/seg-000012/              a segment: vectors.faiss + chunks.sqlite, write-once, shared
                                 by every generation that lists it
    DIR/.lock                    held by the one writer
    DIR/.verified                which files were checksummed whole, as they were then (a cache)

Format 1 (before segments) kept both files in the generation folder itself: such a
generation reads as one segment, named after its folder, until a commit compacts it away.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import IndexCorrupt, IndexLocked, IndexNotFound

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
VECTORS = "vectors.faiss"
CHUNKS = "chunks.sqlite"
MANIFEST = "manifest.json"
COARSE = "coarse.faiss"
CURRENT = "CURRENT"
VERIFIED = ".verified"
SEGMENT_FILES = (VECTORS, CHUNKS)
# How old a file must be for the `.verified` cache to vouch for it.
SETTLED_NS = 2_000_000_000


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def recover_hint(root: Path) -> str:
    return (
        f"run `rag recover --index {root}` to go back to the previous generation, "
        f"or rebuild it with `rag ingest --rebuild --index {root} PATH...`"
    )


def read_pointer(root: Path) -> tuple[str, str]:
    """(generation folder name, manifest sha256) from CURRENT."""
    pointer = root / CURRENT
    if not pointer.exists():
        if not root.exists() or not any(root.glob("gen-*")):
            raise IndexNotFound(f"no index at {root}; build one with `rag ingest --index {root} PATH...`")
        raise IndexCorrupt(f"index {root} has no CURRENT file; {recover_hint(root)}")
    parts = pointer.read_text(encoding="ascii", errors="replace").split()
    # A cut-off pointer must be named as the damaged file, not blamed on the manifest.
    if len(parts) != 2 or not parts[0].startswith("gen-") or not re.fullmatch(r"[0-9a-f]{64}", parts[1]):
        raise IndexCorrupt(f"{pointer} is damaged ({' '.join(parts)[:60]!r}); {recover_hint(root)}")
    return parts[0], parts[1]


def point_at(root: Path, gen: str, manifest_raw: bytes) -> None:
    """The commit point: one atomic replacement of CURRENT."""
    _write_durably(root / CURRENT, f"{gen} {hashlib.sha256(manifest_raw).hexdigest()}\n".encode())


def list_generations(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("gen-*") if p.is_dir() and not p.name.endswith(".tmp"))


def segment_records(manifest: dict[str, Any], gen: str) -> list[dict[str, Any]]:
    """The segments a manifest lists; a format-1 generation is one segment, its own folder."""
    if manifest.get("format_version") == 1:
        return [
            {
                "name": gen,
                "files": manifest["files"],
                "index_type": manifest.get("index_type", "flat"),
                "index_params": manifest.get("index_params") or {},
                "counts": {"chunks": manifest["counts"]["chunks"]},
                "deleted": [],
                "legacy": True,
            }
        ]
    return list(manifest["segments"])


class _Verified:
    """Which segment files were checksummed whole, and how they looked on disk then (size,
    modification time, inode): a file that still looks so is not read whole again. Segment
    files are written once, so a change to one (a truncation, a bit flip written by a tool,
    a copy interrupted) changes how it looks; silent decay of the disk under an unchanged
    file is what this cache gives up catching at open, in exchange for opening a large index
    without reading all of it. `rag recover --index DIR` re-reads everything."""

    _lock = threading.Lock()

    @staticmethod
    def _look(path: Path) -> list[int]:
        st = path.stat()
        return [st.st_size, st.st_mtime_ns, st.st_ino]

    @classmethod
    def read(cls, root: Path) -> dict[str, Any]:
        try:
            data = json.loads((root / VERIFIED).read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    @classmethod
    def hashed(cls, path: Path) -> tuple[str, list[int] | None]:
        """The file's sha256, and how it looked while it was read (None if it changed)."""
        before = cls._look(path)
        sha = sha256_of(path)
        return sha, before if cls._look(path) == before else None

    @classmethod
    def remember(cls, root: Path, found: dict[str, tuple[str, list[int] | None]]) -> None:
        """Record files (relative name -> sha256 and how they looked when it was computed)
        as checksummed; a lost update only costs a checksum later."""
        if not found:
            return
        with cls._lock:
            data = cls.read(root)
            settled = time.time_ns() - SETTLED_NS
            for name, (sha, look) in found.items():
                # A file written moments ago could be changed again within the same tick of
                # the file system's clock, unseen: it is checksummed again next time.
                if look is not None and look[1] <= settled:
                    data[name] = [*look, sha]
            live = {n for n in data if (root / n).exists()}
            data = {n: v for n, v in data.items() if n in live}
            tmp = root / f"{VERIFIED}.{os.getpid()}.{threading.get_ident()}.tmp"
            try:
                tmp.write_text(json.dumps(data), encoding="utf-8")
                os.replace(tmp, root / VERIFIED)
            except OSError:
                tmp.unlink(missing_ok=True)

    @classmethod
    def trusted(cls, root: Path, name: str, sha: str, known: dict[str, Any]) -> bool:
        seen = known.get(name)
        try:
            return bool(seen) and seen == [*cls._look(root / name), sha]
        except OSError:
            return False


def verify_generation(
    root: Path, gen: str, manifest_sha: str | None, *, whole: bool = False
) -> dict[str, Any]:
    """The manifest of `gen` after checking it and the files of every segment it lists (each
    read whole unless the `.verified` cache shows it unchanged since; `whole`: all of them)."""
    folder = root / gen
    mpath = folder / MANIFEST
    if not mpath.exists():
        raise IndexCorrupt(f"{mpath} is missing; {recover_hint(root)}")
    raw = mpath.read_bytes()
    if manifest_sha is not None and hashlib.sha256(raw).hexdigest() != manifest_sha:
        raise IndexCorrupt(f"{mpath} fails its checksum; {recover_hint(root)}")
    try:
        manifest = json.loads(raw)
        version = manifest.get("format_version")
        records = segment_records(manifest, gen) if version in (1, FORMAT_VERSION) else []
    except (ValueError, KeyError, TypeError, AttributeError):
        raise IndexCorrupt(f"{mpath} cannot be parsed; {recover_hint(root)}") from None
    if version not in (1, FORMAT_VERSION):
        raise IndexCorrupt(
            f"{root} has index format {version!r}, this version reads 1 and "
            f"{FORMAT_VERSION}; rebuild it with `rag ingest --rebuild --index {root} PATH...`"
        )
    known = {} if whole else _Verified.read(root)
    checked: dict[str, tuple[str, list[int] | None]] = {}
    for record in records:
        for name, info in record["files"].items():
            rel = f"{record['name']}/{name}"
            path = root / rel
            if not path.exists():
                raise IndexCorrupt(f"{path} is missing; {recover_hint(root)}")
            if _Verified.trusted(root, rel, info["sha256"], known):
                continue
            if path.stat().st_size != info["bytes"]:
                raise IndexCorrupt(f"{path} fails its checksum (damaged); {recover_hint(root)}")
            sha, look = _Verified.hashed(path)
            if sha != info["sha256"]:
                raise IndexCorrupt(f"{path} fails its checksum (damaged); {recover_hint(root)}")
            checked[rel] = (sha, look)
    _Verified.remember(root, checked)
    return manifest


def read_manifest(root: Path, gen: str) -> dict[str, Any]:
    """A generation's manifest, unchecked (the caller verifies, or does not need to)."""
    return json.loads((root / gen / MANIFEST).read_text(encoding="utf-8"))


def write_files_record(folder: Path, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """fsync each file and return {name: {sha256, bytes}} for a manifest."""
    files = {}
    for name in names:
        _fsync(folder / name)
        files[name] = {"sha256": sha256_of(folder / name), "bytes": (folder / name).stat().st_size}
    return files


def next_free_segment(root: Path) -> int:
    """A segment number above every segment folder on disk (finished or not)."""
    numbers = [int(m.group(1)) for p in root.glob("seg-*") if (m := re.match(r"seg-(\d+)", p.name))]
    return max(numbers, default=0) + 1


def referenced(root: Path, gens: Sequence[str]) -> set[str] | None:
    """The folders (segments and format-1 generations) these generations need; None when a
    manifest cannot be read (then nothing may be thought unneeded)."""
    out: set[str] = set(gens)
    for gen in gens:
        try:
            out |= {r["name"] for r in segment_records(read_manifest(root, gen), gen)}
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("cannot read %s to clean up around it (%s): nothing removed", gen, e)
            return None
    return out


def collect_garbage(root: Path, keep: Sequence[str]) -> None:
    """Remove the generations and segments none of `keep` (the live generation and the one
    before it) refers to: older commits, and what a crashed commit left half-written."""
    import shutil

    needed = referenced(root, [g for g in keep if g])
    if needed is None:
        return
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith(("gen-", "seg-")) and path.name not in needed:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def writer_lock(root: Path, *, wait_s: float = 600.0) -> Iterator[None]:
    """Hold the one-writer lock of `root` (other processes wait up to `wait_s`)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise IndexLocked(
                        f"another process has been writing to {root} for over {wait_s:.0f} s; "
                        "wait for it to finish, or stop it"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


def recover(root: str | os.PathLike[str]) -> str:
    """Point CURRENT at the newest generation whose manifest and segments verify (every file
    read whole); returns its name."""
    root = Path(root)
    with writer_lock(root):  # a commit under way would otherwise be undone
        for gen in reversed(list_generations(root)):
            try:
                manifest_raw = (root / gen / MANIFEST).read_bytes()
                verify_generation(root, gen, None, whole=True)
            except (IndexCorrupt, OSError):
                log.warning("generation %s is damaged; skipping it", gen)
                continue
            point_at(root, gen, manifest_raw)
            return gen
    raise IndexCorrupt(
        f"no intact generation left in {root} (a segment they share is damaged); "
        f"rebuild it with `rag ingest --rebuild --index {root} PATH...`"
    )


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("rag-articles", "faiss-cpu", "sentence-transformers", "torch"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out
