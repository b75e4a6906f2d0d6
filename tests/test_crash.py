"""Crash safety: SIGKILL an ingesting process at random moments; the index must always open,
hold as many vectors as chunks, and every article must be wholly old, wholly new, or absent."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rag.chunking import chunk_text
from rag.ingest import ingest
from rag.settings import Settings
from rag.store import Snapshot

from .conftest import ROOT, FakeEmbedder

N_ARTICLES = 60

WORKER = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from conftest import FakeEmbedder
    from rag.ingest import ingest
    from rag.settings import Settings

    s = Settings(index=sys.argv[1], chunk_tokens=40, chunk_overlap=8, dedup_threshold=0)
    print("ready", flush=True)
    ingest([sys.argv[2]], settings=s, embedder=FakeEmbedder())
    """
)


def settings_for(index: Path) -> Settings:
    # Templated articles are near-duplicates by design: every one is indexed here.
    return Settings(index=index, chunk_tokens=40, chunk_overlap=8, dedup_threshold=0)


def version_text(i: int, version: str) -> str:
    return " ".join(f"Article {i} {version} line {j} on tides and ferries." for j in range(40 + i % 7))


def write(folder: Path, version: str, ids: range) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        (folder / f"a{i:03d}.txt").write_text(version_text(i, version))


def check(index: Path, docs: Path) -> None:
    snap = Snapshot.open(index)  # verifies checksums: must never raise
    articles = snap.articles()
    assert len(snap) == sum(a.chunks for a in articles) == snap.manifest["counts"]["chunks"]
    fake = FakeEmbedder()
    for a in articles:
        i = int(Path(a.id).stem[1:])
        _, text = snap.article(a.id)
        assert text in (version_text(i, "old"), version_text(i, "new")), a.id
        expected = chunk_text(a.id, text, fake.token_offsets, max_tokens=40, overlap=8)
        assert a.chunks == len(expected), a.id
        if text == version_text(i, "old"):
            assert i < N_ARTICLES // 2  # only the first half existed before
    snap.close()


def run_trials(tmp_path: Path, kills: int, seed: int, max_trials: int) -> dict[str, int]:
    """Ingest runs, each SIGKILLed at a random moment, until `kills` of them were killed
    before they finished (a run that finished first counts as a trial, not a kill)."""
    rng = random.Random(seed)
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT), tests=str(ROOT / "tests")))
    # How long an uninterrupted ingest takes, to spread the kills over its whole length.
    probe = tmp_path / "probe"
    write(probe / "docs", "new", range(N_ARTICLES))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(probe / "idx"), str(probe / "docs")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    t0 = time.perf_counter()
    assert proc.wait(timeout=300) == 0
    full = time.perf_counter() - t0
    stats = {"trials": 0, "killed": 0, "in_commit": 0, "completed": 0}
    t = -1
    while stats["killed"] < kills and stats["trials"] < max_trials:
        t += 1
        base = tmp_path / f"t{t}"
        index, docs = base / "idx", base / "docs"
        write(docs, "old", range(N_ARTICLES // 2))
        ingest([docs], settings=settings_for(index), embedder=FakeEmbedder())
        write(docs, "new", range(N_ARTICLES))
        proc = subprocess.Popen(
            [sys.executable, str(script), str(index), str(docs)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # imports done: from here on it is ingest work
        # Every other kill aims at the end of the run, where the commit happens.
        time.sleep(rng.uniform(0, full) if t % 2 else rng.uniform(full * 0.7, full))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=300)
        stats["trials"] += 1
        if proc.returncode == -signal.SIGKILL:
            stats["killed"] += 1
        else:
            assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
            stats["completed"] += 1
            full *= 0.9  # it ran faster than the probe: aim earlier
        # A commit had begun if a new generation or segment folder (finished or not) is on disk.
        gens = [p.name for p in index.iterdir() if p.name.startswith("gen-")]
        live = (index / "CURRENT").read_text().split()[0]
        listed = {r["name"] for r in Snapshot.open(index, verify=False).manifest["segments"]}
        segs = [p.name for p in index.iterdir() if p.name.startswith("seg-") and p.name not in listed]
        if proc.returncode != 0 and (segs or any(g != live and g != "gen-000001" for g in gens)):
            stats["in_commit"] += 1
        check(index, docs)
        # The next ingest always recovers to the full new state.
        r = ingest([docs], settings=settings_for(index), embedder=FakeEmbedder())
        assert r.ok
        check(index, docs)
        assert len(Snapshot.open(index).articles()) == N_ARTICLES
    return stats


def test_random_kills_default(tmp_path):
    stats = run_trials(tmp_path, kills=5, seed=int(os.environ.get("CRASH_SEED", "7")), max_trials=20)
    assert stats["killed"] == 5


@pytest.mark.long
def test_random_kills_long(tmp_path, capsys):
    stats = run_trials(tmp_path, kills=50, seed=int(os.environ.get("CRASH_SEED", "11")), max_trials=150)
    with capsys.disabled():
        print(f"\ncrash trials: {stats}")
    assert stats["killed"] == 50
