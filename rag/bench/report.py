"""What the run is judged against (`TARGETS`, `targets`) and the table `rag bench` prints
(`format_report`)."""

from __future__ import annotations

from typing import Any

TARGETS = {
    "ingest_ratio": ("ingest time / encoding alone", "<=", 1.15),
    # Twice the 42.6 chunks/s the torch embedder ingests of the default bench corpus.
    "ingest_chunks_per_s": ("ingest chunks/s (bench corpus)", ">=", 85.0),
    "warm_answer_ratio": ("warm answer / (retrieval + llama.cpp alone)", "<=", 1.05),
    "retrieval_p50_ms_100k": ("query embedding + search p50 at 100k, ms", "<", 30.0),
    "retrieval_p50_ms_1m": ("query embedding + search p50 at 1M, ms", "<", 60.0),
    "peak_rss_gib_1m": ("peak RSS: 1M x 384 input + IVF build + search, GiB", "<", 4.0),
    "recall_at_10_1m": ("ANN recall@10 vs exact at 1M", ">=", 0.95),
    "warm_ttft_s": ("warm time to first token p50, s", "<=", 1.5),
    "cold_start_ratio": ("fresh `rag ask` / fresh llama.cpp alone, first token", "<=", 1.5),
    "server_ask_ratio": ("fresh `rag ask`, server running / warm answer, first token", "<=", 1.2),
    "help_s": ("`rag --help`, s", "<", 0.5),
    "commit_s_largest": ("add one article at the largest size: commit p50, s", "<", 1.0),
    "commit_mb_largest": ("add one article at the largest size: MB written", "<", 10.0),
    "feed20_search_ratio": ("search over 20 segments (a feed's) / one merged (p50)", "<=", 1.2),
    "bulk_search_ratio": ("search after 20 equal commits / one merged (p50)", "<=", 1.2),
}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets with the measured value and whether it was met (None: not run)."""
    q = result.get("query", {}).get("stages", {})
    scale = {p["vectors"]: p for p in result.get("scale", [])}
    at_1m = scale.get(1_000_000, {})
    sizes = result.get("commit", {}).get("sizes") or [{}]
    largest = max(sizes, key=lambda p: p.get("chunks", 0)).get("add_one_article", {})
    values = {
        "ingest_ratio": result.get("ingest", {}).get("ratio"),
        "ingest_chunks_per_s": result.get("ingest", {}).get("chunks_per_s"),
        "warm_answer_ratio": q.get("answer_ms", {}).get("ratio"),
        "retrieval_p50_ms_100k": scale.get(100_000, {}).get("retrieval_p50_ms"),
        "retrieval_p50_ms_1m": at_1m.get("retrieval_p50_ms"),
        "peak_rss_gib_1m": round(at_1m["ann_phase_peak_rss_mib"] / 1024, 2)
        if at_1m.get("ann_phase_peak_rss_mib")
        else None,
        "recall_at_10_1m": at_1m.get("ann", {}).get("recall_at_10"),
        "warm_ttft_s": round(q["ttft_ms"]["p50"] / 1000, 3) if q.get("ttft_ms", {}).get("p50") else None,
        "cold_start_ratio": result.get("cold_start", {}).get("ratio_first_token"),
        "server_ask_ratio": result.get("cold_start", {}).get("server", {}).get("ratio_to_warm"),
        "help_s": result.get("startup", {}).get("help_s"),
        "commit_s_largest": largest.get("seconds", {}).get("p50"),
        "commit_mb_largest": largest.get("written_mb"),
        "feed20_search_ratio": result.get("commit", {}).get("segments", {}).get("feed", {}).get("ratio_p50"),
        "bulk_search_ratio": result.get("commit", {}).get("segments", {}).get("bulk", {}).get("ratio_p50"),
    }
    out = []
    for key, (what, op, limit) in TARGETS.items():
        v = values[key]
        met = None
        if v is not None:
            met = v <= limit if op == "<=" else v < limit if op == "<" else v >= limit
        out.append({"name": key, "what": what, "target": f"{op} {limit}", "value": v, "met": met})
    return out


# -- the table -------------------------------------------------------------------------------


def format_report(r: dict[str, Any]) -> str:
    """The result as the table `rag bench` prints."""
    s = r["settings"]
    lines = [
        f"rag bench{' --quick' if r.get('quick') else ''}: {r['machine']['cpus']} CPUs, "
        f"threads {s['threads']}, batch {s['batch_size']}, n_ctx {s['n_ctx']}, k {s['top_k']}, "
        f"max_tokens {s['max_tokens']}, model {s['model']}, embedder {s['embedder']} "
        f"({s.get('embed_backend', 'torch')})",
    ]
    if "ingest" in r:
        g = r["ingest"]
        inside = g["inside_ingest_s"]
        lines += [
            "",
            f"INGEST  {g['articles']} articles, {g['chunks']} chunks, {g['text_mb']:.2f} MB of text "
            f"({r['corpus']['source']})",
            f"  {'':28}{'rag ingest':>14}{'encode alone':>16}{'ratio':>9}",
            f"  {'seconds':28}{g['ingest_s']:>14.2f}{g['encode_alone_s']:>16.2f}{g['ratio']:>8.3f}x",
            f"  {'chunks/s':28}{g['chunks_per_s']:>14.1f}{g['encode_alone_chunks_per_s']:>16.1f}",
            f"  {'articles/s, MB/s':28}{g['articles_per_s']:>8.1f}, {g['mb_per_s']:.3f}",
            f"  outside encoding {g['outside_encoding_share'] * 100:.1f}% of ingest: tokenising for chunks "
            f"{inside['tokenise_for_chunking']:.2f} s, commit (SQLite+FTS5+FAISS+fsync) "
            f"{inside['commit_sqlite_fts_faiss_fsync']:.2f} s, parse/chunk/hash "
            f"{inside['other_parse_chunk_hash']:.2f} s",
        ]
    if "query" in r:
        q = r["query"]
        st = q["stages"]
        lines += [
            "",
            f"QUERY  {q['questions']} questions, warm, p50 / p95; prompt {q['prompt_tokens']['p50']:.0f} "
            f"tokens p50, {q['kv_prefix']['prefix_tokens']} of them the shared cached prefix",
            f"  {'stage':22}{'rag':>20}{'raw':>20}  {'ratio':>7}  raw is (ratio: median per question)",
        ]
        for name, label, unit in (
            ("query_embedding_ms", "query embedding", "ms"),
            ("search_ms", "search (hybrid)", "ms"),
            ("evidence_ms", "evidence sentences", "ms"),
            ("retrieve_ms", "retrieve (all above)", "ms"),
            ("prompt_assembly_ms", "prompt assembly", "ms"),
            ("ttft_ms", "first token", "ms"),
            ("decode_tokens_per_s", "decode", "tok/s"),
            ("answer_ms", "whole answer", "ms"),
            ("answer_evidence_ms", "after: answer evidence", "ms"),
        ):
            e = st.get(name)
            if not e:
                continue
            ours = f"{e['p50']:.1f} / {e['p95']:.1f} {unit}"
            raw = f"{e['raw']['p50']:.1f} / {e['raw']['p95']:.1f}" if "raw" in e else ""
            ratio = f"{e['ratio']:.3f}x" if e.get("ratio") else ""
            lines.append(f"  {label:22}{ours:>20}{raw:>20}  {ratio:>7}  {e.get('raw_is') or ''}")
        kv = q["kv_prefix"]
        lines.append(
            f"  llama.cpp first token: {kv['ttft_ms_with_prefix_cached']['p50']:.0f} ms with the "
            f"{kv['prefix_tokens']}-token prefix cached, {kv['ttft_ms_empty_cache']['p50']:.0f} ms "
            f"from an empty cache (saves {kv['saved_ms_p50']:.0f} ms); prefill "
            f"{q['prefill_tokens_per_s']:.0f} tok/s"
        )
        lines.append(
            f"  identical prompt tokens: {q['same_prompt_as_pipeline']}; identical answers: "
            f"{q['same_answer_as_llama_alone']}"
        )
    if "cold_start" in r:
        c = r["cold_start"]
        lines += [
            "",
            f"COLD START  fresh `rag ask` to first token {c['rag_ask_first_token_s']:.2f} s "
            f"(exit {c['rag_ask_total_s']:.2f} s); fresh llama.cpp alone on the same prompt "
            f"{c['llama_alone_first_token_s']:.2f} s; ratio {c['ratio_first_token']:.2f}x "
            f"(best of {c['runs']}, ABBA)",
        ]
        if c.get("server"):
            v = c["server"]
            lines.append(
                f"  with `rag serve` running on the index: fresh `rag ask` to first token "
                f"{v['rag_ask_first_token_s']:.2f} s (p50 of {v.get('questions', 1)} new questions); "
                f"warm answer in process {v['warm_answer_first_token_s'] or 0:.2f} s; "
                f"ratio {v['ratio_to_warm'] or 0:.2f}x"
            )
    if "startup" in r:
        u = r["startup"]
        lines.append(
            f"STARTUP  rag --help {u['help_s']:.3f} s, rag list {u['list_s']:.3f} s, "
            f"bare python {u['python_bare_s']:.3f} s (p50 of {u['runs']})"
        )
    if "scale" in r:
        v = r["scale_vectors"]
        lines += [
            "",
            f"SCALE  {v['method']}: {v['components']} components on {v['fitted_on']} vectors; "
            f"mean/top-1/top-10 cosine real {_profile(v['real_profile'])}, "
            f"synthetic {_profile(v['synthetic_profile'])}",
            f"  {'vectors':>9} {'index':>6} {'build s':>8} {'RSS MiB':>8} {'search p50':>11} "
            f"{'recall@10':>9} {'nprobe':>10}   {'exact: build s':>14} {'RSS MiB':>8} {'p50 ms':>8} "
            f"{'speedup':>8} {'retrieval p50':>14}",
        ]
        for p in r["scale"]:
            a, e = p["ann"], p["exact"]
            lines.append(
                f"  {p['vectors']:>9,} {'IVF':>6} {a['build_s']:>8.1f} {a['rss_mib']:>8.0f} "
                f"{a['search_ms']['p50']:>8.3f} ms {a['recall_at_10']:>9.3f} "
                f"{str(a['nprobe']) + '/' + str(a['nlist']):>10}   {e['build_s']:>14.2f} "
                f"{e['rss_mib']:>8.0f} {e['search_ms']['p50']:>8.2f} {p['search_speedup_p50'] or 0:>7.0f}x "
                f"{p['retrieval_p50_ms']:>8.1f} ms ({p['store_uses']})"
            )
        lines.append(
            f"  retrieval p50 = query embedding p50 {r['scale_query_embedding_ms']['p50']:.1f} ms + "
            f"search p50 of the index the store uses at that size (ann_threshold "
            f"{s['ann_threshold']:,})"
        )
        big = r["scale"][-1]
        if big.get("ann_phase_peak_rss_mib"):
            lines.append(
                f"  at {big['vectors']:,}: process peak {big['ann_phase_peak_rss_mib'] / 1024:.2f} GiB "
                f"holding the {big['input_mib'] / 1024:.2f} GiB input while building and searching IVF; "
                f"{big['process_peak_rss_mib'] / 1024:.2f} GiB once the exact index was added too"
            )
    if "web" in r:
        w = r["web"]
        lines += [
            "",
            f"WEB  {w['pages']} article pages served on 127.0.0.1, {w['chunks']} chunks",
            f"  rag ingest URL...  {w['pages_per_s']:.1f} pages/s ({w['ingest_s']:.2f} s: fetch, extract, "
            f"dedup, embed, commit); fetch + extract alone {w['fetch_extract_pages_per_s']:.1f} pages/s",
        ]
    if "commit" in r:
        c = r["commit"]
        lines += ["", "COMMIT  one real article ingested (dedup, chunk, embed, commit) into N chunks"]
        head = ("chunks", "index MB", "built in", "commit p50", "max", "written MB")
        lines.append("  " + "".join(f"{h:>{w}}" for h, w in zip(head, (10, 10, 10, 12, 8, 12), strict=True)))
        for p in c["sizes"]:
            a = p["add_one_article"]
            lines.append(
                f"  {p['chunks']:>10,}{p['index_mb']:>10.1f}{p['build_s']:>9.1f}s"
                f"{a['seconds']['p50']:>11.3f}s{a['seconds_max']:>7.2f}s{a['written_mb']:>12.2f}"
            )
        for name, g in c["segments"].items():
            a, b = g["segmented"], g["merged"]
            lines.append(
                f"  {name}: {g['commits']} commits ({g['chunks']:,} chunks) left {a['segments']} segments: "
                f"search (k {g['k']}) p50 {a['search_ms']['p50']:.2f} ms, recall@10 {a.get('recall_at_10')}, "
                f"nprobe {a['nprobe']}; `rag compact --all` ({g['compact_s']:.0f} s) to one: "
                f"{b['search_ms']['p50']:.2f} ms, recall@10 {b.get('recall_at_10')}, nprobe {b['nprobe']}; "
                f"ratio {g['ratio_p50']}"
            )
    if "remote_embed" in r:
        e = r["remote_embed"]
        ratio = f", {e['ratio_to_in_process']:.2f}x in process" if e.get("ratio_to_in_process") else ""
        lines += [
            "",
            f"REMOTE EMBED  {e['chunks']} chunks embedded by a `rag serve` ({e['server_embed_backend']}) "
            f"over /v1/embeddings on 127.0.0.1",
            f"  rag ingest --embed-backend openai  {e['chunks_per_s']:.1f} chunks/s "
            f"({e['ingest_s']:.2f} s){ratio}",
        ]
    lines += ["", "TARGETS"]
    for t in r["targets"]:
        mark = "-" if t["met"] is None else "met" if t["met"] else "MISSED"
        value = "-" if t["value"] is None else t["value"]
        lines.append(f"  {t['what']:48} {t['target']:>8}  {value!s:>8}  {mark}")
    lines.append(f"\n{r['seconds']:.0f} s in all")
    return "\n".join(lines)


def _profile(p: dict[str, float]) -> str:
    return f"{p['mean_cos']:.2f}/{p['top1_cos']:.2f}/{p['top10_cos']:.2f}"
