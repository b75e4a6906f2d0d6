"""The COLD START and STARTUP sections (`--only startup`), each in fresh processes: `rag ask` to
its first token against a Python that loads llama.cpp alone and reads the same prompt tokens;
`rag ask` while a `rag serve` runs on the index; `rag --help` and `rag list` against a bare
interpreter."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..settings import Settings
from .measure import percentile, ratio_of


def rag_command() -> list[str]:
    """How to start the `rag` command of this environment."""
    script = Path(sys.executable).with_name("rag")
    return [str(script)] if script.exists() else [sys.executable, "-m", "rag.cli"]


def _first_byte(
    cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 600
) -> dict[str, Any]:
    """Seconds from spawning `cmd` to its first byte on stdout, and to its exit."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        assert proc.stdout is not None
        first = proc.stdout.read(1)
        t_first = time.perf_counter() - t0
        rest = proc.stdout.read()
        proc.wait(timeout=timeout)
        total = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}... exited {proc.returncode}: {stderr[-500:]}")
    return {"first_s": t_first if first else total, "total_s": total, "stdout": (first + rest).decode()}


_LLAMA_ALONE = """
import json, sys
import contextlib
from llama_cpp import Llama
spec = json.load(open(sys.argv[1]))
loading = contextlib.nullcontext()
if spec["amx"]:  # the same weights as rag loads them (rag.generation.loading_weights)
    from rag.generation import loading_weights
    loading = loading_weights()
with loading:
    llm = Llama(model_path=spec["model"], n_ctx=spec["n_ctx"], n_threads=spec["threads"],
                n_threads_batch=spec["threads"], n_gpu_layers=spec["n_gpu_layers"], seed=spec["seed"],
                flash_attn=spec["flash_attn"], verbose=False)
kw = dict(max_tokens=spec["max_tokens"], temperature=spec["temperature"], seed=spec["seed"],
          stop=spec["stop"], stream=True, repeat_penalty=1.0)
if spec["temperature"] == 0:
    kw["top_k"] = 1
for part in llm.create_completion(prompt=spec["tokens"], **kw):
    sys.stdout.write(part["choices"][0]["text"])
    sys.stdout.flush()
"""


def _model_flags(s: Settings) -> list[str]:
    """The flags that make a fresh `rag` process load the models these settings name."""
    return [
        *("--embedder", s.embedder, "--embed-backend", s.embed_backend, "--model", s.model),
        *("--n-ctx", str(s.n_ctx), "--threads", str(s.threads), "--context", s.context),
    ]


def bench_server_ask(
    index: Path, *, settings: Settings, questions: Sequence[str], warm_ttft_s: float | None, runs: int = 1
) -> dict[str, Any]:
    """A fresh `rag ask` while a `rag serve` runs on the index (found through its SERVER
    file, so the question costs retrieval and generation only), to its first token, against
    the warm answer's first token in process (p50). Each timed question is one the server
    has not answered yet: a repeated one would find its whole prompt in llama.cpp's cache."""
    from ..client import find

    s = settings
    flags = ["--index", str(index), "-k", str(s.top_k), "--max-tokens", str(s.max_tokens)]
    flags += ["--temperature", str(s.temperature)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = _model_flags(s)
    serve = [*rag_command(), "serve", "--no-ui", "--port", str(port), *model, "--index", str(index)]
    server = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 300
        while find(index) is None:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("`rag serve` did not come up for the server measurement")
            time.sleep(0.5)
        ask = [*rag_command(), "ask"]
        _first_byte([*ask, questions[0], *flags], env=env)  # the server's first question warms it
        timed = list(questions[1 : 1 + runs]) or list(questions[:1])
        asks = [_first_byte([*ask, q, *flags], env=env) for q in timed]
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    import numpy as np

    median = float(np.median([r["first_s"] for r in asks]))
    return {
        "questions": len(asks),
        "rag_ask_first_token_all_s": [round(r["first_s"], 3) for r in asks],
        "rag_ask_first_token_s": round(median, 3),
        "warm_answer_first_token_s": round(warm_ttft_s, 3) if warm_ttft_s else None,
        "ratio_to_warm": ratio_of(median, warm_ttft_s),
    }


def bench_cold_start(
    index: Path, *, settings: Settings, prompt: dict[str, Any], workdir: Path, runs: int = 1
) -> dict[str, Any]:
    """A fresh `rag ask` to its first token (models loaded, index opened and verified)
    against a fresh Python that loads llama.cpp alone and reads the same prompt tokens;
    `runs` pairs, ABBA, the best of each reported."""
    from ..generation import has_amx
    from ..models import resolve_model

    s = settings
    cmd = [
        *rag_command(),
        "ask",
        prompt["question"],
        "--local",
        "--index",
        str(index),
        *_model_flags(s),
        "-k",
        str(s.top_k),
        "--max-tokens",
        str(s.max_tokens),
        "--temperature",
        str(s.temperature),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    spec = {
        "model": str(resolve_model(s.model)),
        "n_ctx": s.n_ctx,
        "threads": s.threads,
        "n_gpu_layers": s.n_gpu_layers,
        "seed": s.seed,
        "flash_attn": s.flash_attn,
        "amx": has_amx(),
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "tokens": prompt["tokens"],
        "stop": prompt["stop"],
    }
    spec_path = workdir / "llama-alone.json"
    spec_path.write_text(json.dumps(spec))
    alone_cmd = [sys.executable, "-c", _LLAMA_ALONE, str(spec_path)]
    ours_runs: list[dict[str, Any]] = []
    alone_runs: list[dict[str, Any]] = []
    for i in range(2 * runs):
        if (i % 4) in (0, 3):
            ours_runs.append(_first_byte(cmd, env=env))
        else:
            alone_runs.append(_first_byte(alone_cmd, env=env))
    ours = min(ours_runs, key=lambda r: r["first_s"])
    alone = min(alone_runs, key=lambda r: r["first_s"])
    return {
        "question": prompt["question"],
        "runs": runs,
        "rag_ask_first_token_all_s": [round(r["first_s"], 3) for r in ours_runs],
        "llama_alone_first_token_all_s": [round(r["first_s"], 3) for r in alone_runs],
        "rag_ask_first_token_s": round(ours["first_s"], 3),
        "rag_ask_total_s": round(ours["total_s"], 3),
        "llama_alone_first_token_s": round(alone["first_s"], 3),
        "llama_alone_total_s": round(alone["total_s"], 3),
        "ratio_first_token": ratio_of(ours["first_s"], alone["first_s"]),
    }


def bench_startup(index: Path, *, runs: int = 5) -> dict[str, Any]:
    """Wall time of `rag --help` and `rag list` in fresh processes, next to a bare
    `python -c pass` (the interpreter's own start)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}

    def best(cmd: list[str]) -> tuple[float, float]:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
            times.append(time.perf_counter() - t)
        return percentile(times, 0.5), min(times)

    bare = best([sys.executable, "-c", "pass"])
    helped = best([*rag_command(), "--help"])
    listed = best([*rag_command(), "list", "--index", str(index)])
    return {
        "runs": runs,
        "python_bare_s": round(bare[0], 3),
        "help_s": round(helped[0], 3),
        "help_min_s": round(helped[1], 3),
        "list_s": round(listed[0], 3),
        "list_min_s": round(listed[1], 3),
        "help_ratio_to_bare_python": ratio_of(helped[0], bare[0]),
        "list_ratio_to_bare_python": ratio_of(listed[0], bare[0]),
    }
