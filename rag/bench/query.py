"""The QUERY section: every stage of a warm answer, timed by calling the functions the pipeline
calls, then the pipeline's own answer, against FAISS alone on the identical query vector and
llama.cpp alone (`Llama.create_completion`) on the identical prompt tokens."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..settings import Settings
from .measure import Progress, p50_p95, percentile, ratio_of

if TYPE_CHECKING:
    from ..embedding import Encoder
    from ..generation import LlamaCppGenerator

QUESTIONS = (
    "How much aluminum could Russia sell to the United States?",
    "What did the central bank say about inflation?",
    "What did Putin say about Russia's rare earth reserves?",
    "What did astronomers discover with the telescope?",
    "What does Kyiv want from the United States?",
    "Why did the rail operator cancel the new line?",
    "Where did Kirill Dmitriev meet U.S. officials?",
    "How much could the drought cost coastal towns?",
    "How did Putin describe Trump's approach to the talks?",
    "What did critics say about the hospital waiting times?",
)


def shared_prefix(generator: LlamaCppGenerator, today: str = "") -> list[int]:
    """The prompt tokens every question shares (system prompt, worked example, template):
    what llama.cpp keeps in its KV cache from one question to the next. `today`: the date
    the system prompt names over dated articles."""
    from .. import prompt as P

    fixed = [{"role": "system", "content": P.system_prompt(today)}, *P.EXAMPLE]
    a = generator.format([*fixed, {"role": "user", "content": "alpha"}]).tokens
    b = generator.format([*fixed, {"role": "user", "content": "omega"}]).tokens
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return list(a[:n])


def _prime(llm: Any, prefix: Sequence[int]) -> None:
    """Leave llama.cpp's cache holding exactly `prefix`: the state a warm question meets
    (the previous question shares at least this prefix with it)."""
    llm.reset()
    for _ in llm.create_completion(prompt=list(prefix), max_tokens=1, temperature=0.0, top_k=1, stream=True):
        break


def _llama_alone(llm: Any, tokens: Sequence[int], stop: Sequence[str], settings: Settings) -> dict[str, Any]:
    """llama.cpp on prompt tokens with the pipeline's sampling settings, streamed."""
    kwargs: dict[str, Any] = {
        "max_tokens": settings.max_tokens,
        "temperature": settings.temperature,
        "seed": settings.seed,
        "stop": list(stop),
        "stream": True,
        "repeat_penalty": 1.0,
    }
    if settings.temperature == 0:
        kwargs["top_k"] = 1
    t0 = time.perf_counter()
    first = last = None
    text = ""
    for part in llm.create_completion(prompt=list(tokens), **kwargs):
        piece = part["choices"][0]["text"]
        if piece:
            now = time.perf_counter()
            first = first if first is not None else now
            last = now
            text += piece
    end = time.perf_counter()
    return {
        "ttft_s": (first - t0) if first is not None else end - t0,
        "total_s": end - t0,
        "decode_s": (last - first) if first is not None and last is not None else 0.0,
        "text": text.strip(),
    }


def bench_query(
    index: Path,
    *,
    settings: Settings,
    embedder: Encoder,
    generator: LlamaCppGenerator,
    questions: Sequence[str],
    kv_probes: int | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-stage latency of answering `questions` over `index`, warm, against FAISS alone
    and llama.cpp alone. Returns the figures and, for the cold start, one prompt."""
    import numpy as np

    from .. import prompt as P
    from ..guard import passages_for_model
    from ..pipeline import RAG
    from ..retrieval import evidence, search, within

    settings = settings.with_(index=index)
    rag = RAG(settings, embedder=embedder, generator=generator)
    snap = rag.snapshot()
    if snap is None or len(snap) == 0:
        from ..errors import IndexNotFound

        raise IndexNotFound(f"no vectors in {index}")
    llm = generator.llm
    k = settings.top_k
    pool = min(max(4 * k, 20), len(snap))
    # Over dated articles the pipeline's prompt names today and each passage's date: so does this one.
    today = rag.query_time(questions[0]).today.isoformat() if settings.read_time and snap.dated() else ""
    prefix = shared_prefix(generator, today)
    # Warm-up: first calls allocate buffers and page the model in.
    rag.retrieve(questions[0], k=k)
    _prime(llm, prefix)

    rows: list[dict[str, Any]] = []
    first_prompt: dict[str, Any] = {}
    for i, q in enumerate(questions):
        r: dict[str, Any] = {"question": q}
        # The stages, by the functions the pipeline calls, each next to its raw component.
        t = time.perf_counter()
        qvec = embedder.encode_query(q)
        r["embed_ms"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        model = getattr(embedder, "model", None)  # a remote embedder is its own raw component
        if model is not None:
            model.encode(
                [q], batch_size=settings.batch_size, normalize_embeddings=True, show_progress_bar=False
            )
        else:
            embedder.encode([q])
        r["embed_alone_ms"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        hits = search(snap, q, qvec, k, fusion=settings.fusion)
        r["search_ms"] = (time.perf_counter() - t) * 1000
        q32 = np.ascontiguousarray(qvec.reshape(1, -1), dtype=np.float32)
        t = time.perf_counter()
        snap.index.search(q32, pool)
        r["faiss_ms"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        evidence(embedder.encode, qvec, [row.text for row, _ in hits], per_text=settings.evidence_sentences)
        r["evidence_ms"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        sources = within(rag.retrieve(q, k=k), settings.margin)
        r["retrieve_ms"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        messages, _ = P.build_messages(
            q,
            passages_for_model(sources, windows=settings.windows),
            generator,
            max_tokens=settings.max_tokens,
            headers=[P.published(s.date, s.source) for s in sources] if today else (),
            today=today,
        )
        prompt = generator.format(messages)
        r["prompt_ms"] = (time.perf_counter() - t) * 1000
        r["prompt_tokens"] = len(prompt.tokens)
        r["prefix_tokens"] = len(prefix)
        if not first_prompt:
            first_prompt = {"question": q, "tokens": list(prompt.tokens), "stop": list(prompt.stop)}

        # The pipeline's own answer, llama.cpp's cache holding the shared prefix.
        _prime(llm, prefix)
        t0 = time.perf_counter()
        stream = rag.stream(q)
        first = last = None
        for _piece in stream:
            now = time.perf_counter()
            first = first if first is not None else now
            last = now
        end = time.perf_counter()
        answer = stream.answer
        assert answer is not None
        r["answer_ttft_ms"] = ((first or end) - t0) * 1000
        r["answer_total_ms"] = (end - t0) * 1000
        r["answer_decode_s"] = (last - first) if first is not None and last is not None else 0.0
        r["answer_timings"] = answer.to_dict()["timings"]
        r["completion_tokens"] = answer.timings.completion_tokens
        r["generated"] = answer.timings.prompt_tokens > 0
        r["same_prompt"] = answer.timings.prompt_tokens in (0, len(prompt.tokens))
        post = getattr(rag, "answer_evidence", None)
        if post is not None and answer.found and answer.sources:
            t = time.perf_counter()
            post(answer.query, answer.answer, [s.text for s in answer.sources])
            r["answer_evidence_ms"] = (time.perf_counter() - t) * 1000

        # llama.cpp alone on the identical tokens, from the same cache state.
        _prime(llm, prefix)
        alone = _llama_alone(llm, prompt.tokens, prompt.stop, settings)
        r["llama_ttft_ms"] = alone["ttft_s"] * 1000
        r["llama_total_ms"] = alone["total_s"] * 1000
        r["llama_decode_s"] = alone["decode_s"]
        # The model's own text, also when verification withdrew it.
        r["same_answer"] = alone["text"] == (answer.draft or answer.answer) if r["generated"] else None
        # ... and with an empty cache: what reusing the shared prefix saves.
        if kv_probes is None or i < kv_probes:
            llm.reset()
            cold = _llama_alone(llm, prompt.tokens, prompt.stop, settings.with_(max_tokens=1))
            r["llama_ttft_no_prefix_ms"] = cold["ttft_s"] * 1000
        rows.append(r)
        if progress:
            progress("Questions", i + 1, len(questions))
    _prime(llm, prefix)
    return _query_summary(rows, settings), first_prompt


def _query_summary(rows: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    def get(key: str) -> Callable[[dict[str, Any]], float | None]:
        return lambda r: r.get(key)

    def tps(decode_key: str) -> Callable[[dict[str, Any]], float | None]:
        def f(r: dict[str, Any]) -> float | None:
            ok = r["generated"] and r["completion_tokens"] > 1 and r[decode_key] > 0
            return (r["completion_tokens"] - 1) / r[decode_key] if ok else None

        return f

    def plus(a: str, b: str) -> Callable[[dict[str, Any]], float | None]:
        return lambda r: r[a] + r[b] if r["generated"] else None

    def generated(key: str) -> Callable[[dict[str, Any]], float | None]:
        return lambda r: r[key] if r["generated"] else None

    gen_rows = [r for r in rows if r["generated"]]
    Stage = tuple[Callable[[dict[str, Any]], Any], Callable[[dict[str, Any]], Any] | None, str | None]
    stages: dict[str, Stage] = {
        "query_embedding_ms": (get("embed_ms"), get("embed_alone_ms"), "SentenceTransformer.encode"),
        "search_ms": (get("search_ms"), get("faiss_ms"), "FAISS index.search"),
        "evidence_ms": (get("evidence_ms"), None, None),
        "retrieve_ms": (get("retrieve_ms"), None, None),
        "prompt_assembly_ms": (get("prompt_ms"), None, None),
        "answer_evidence_ms": (get("answer_evidence_ms"), None, None),
        "ttft_ms": (
            generated("answer_ttft_ms"),
            plus("retrieve_ms", "llama_ttft_ms"),
            "retrieve + llama.cpp first token",
        ),
        "llama_ttft_ms": (generated("llama_ttft_ms"), None, None),
        "decode_tokens_per_s": (tps("answer_decode_s"), tps("llama_decode_s"), "llama.cpp alone"),
        "answer_ms": (
            generated("answer_total_ms"),
            plus("retrieve_ms", "llama_total_ms"),
            "retrieve + llama.cpp alone",
        ),
    }
    out: dict[str, Any] = {
        "questions": len(rows),
        "generated": len(gen_rows),
        "top_k": settings.top_k,
        "max_tokens": settings.max_tokens,
        "n_ctx": settings.n_ctx,
        "threads": settings.threads,
        "stages": {},
    }
    for name, (ours_f, raw_f, raw_name) in stages.items():
        ours = [v for v in map(ours_f, rows) if v is not None]
        entry: dict[str, Any] = p50_p95(ours)
        if raw_f is not None:
            pairs = [(a, b) for a, b in ((ours_f(r), raw_f(r)) for r in rows) if a is not None and b]
            entry["raw"] = p50_p95([b for _, b in pairs])
            entry["raw_is"] = raw_name
            entry["ratio_p50"] = ratio_of(entry["p50"], entry["raw"]["p50"])
            # Each question's pair ran back to back: the median of their ratios resists
            # another process taking the CPU for a while better than a ratio of medians.
            entry["ratio"] = round(percentile([a / b for a, b in pairs], 0.5), 3) if pairs else None
        out["stages"][name] = entry
    prompt_tokens = [float(r["prompt_tokens"]) for r in rows]
    prefix = rows[0]["prefix_tokens"] if rows else 0
    with_prefix = [r["llama_ttft_ms"] for r in gen_rows]
    probed = [r for r in gen_rows if "llama_ttft_no_prefix_ms" in r]
    without = [r["llama_ttft_no_prefix_ms"] for r in probed]
    new_tokens = [r["prompt_tokens"] - r["prefix_tokens"] for r in gen_rows]
    out["prompt_tokens"] = p50_p95(prompt_tokens, 0)
    out["prefill_tokens_per_s"] = round(
        percentile([n / (ms / 1000) for n, ms in zip(new_tokens, with_prefix, strict=True) if ms > 0], 0.5), 1
    )
    out["kv_prefix"] = {
        "prefix_tokens": prefix,
        "ttft_ms_with_prefix_cached": p50_p95([r["llama_ttft_ms"] for r in probed]),
        "ttft_ms_empty_cache": p50_p95(without),
        "probed_questions": len(probed),
        "saved_ms_p50": round(
            percentile([r["llama_ttft_no_prefix_ms"] - r["llama_ttft_ms"] for r in probed], 0.5), 1
        ),
    }
    out["same_prompt_as_pipeline"] = all(r["same_prompt"] for r in rows)
    out["same_answer_as_llama_alone"] = all(r["same_answer"] for r in gen_rows)
    out["records"] = [
        {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items() if k != "answer_timings"}
        | {"timings": r["answer_timings"]}
        for r in rows
    ]
    return out
