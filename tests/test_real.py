"""The real path end to end: bundled embedder, FAISS on disk, bundled GGUF at temperature 0."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from rag import RAG, QuestionError, QuestionTooLong, Settings
from rag.prompt import REFUSAL

from .conftest import ROOT, SAMPLE, shared

ALUMINUM = "How much aluminum could Russia sell to the United States?"


@pytest.fixture
def make_rag(tmp_path, real_embedder, real_generator):
    def make(**overrides):
        settings = Settings(index=tmp_path / "idx", temperature=0.0, seed=0).with_(**overrides)
        return RAG(settings, embedder=real_embedder, generator=real_generator)

    return make


def test_sample_answer_is_cited_by_the_model(make_rag):
    rag = make_rag()
    rag.ingest([SAMPLE])
    answer = rag.ask(ALUMINUM)
    assert answer.found
    assert "2 million" in answer.answer
    # The model wrote the marker itself; the code never adds one.
    cited = [int(n) for n in re.findall(r"\[(\d+)\]", answer.answer)]
    assert cited, answer.answer
    by_n = {s.n: s for s in answer.sources}
    assert any(any("2 million tons" in e for e in by_n[n].evidence) for n in cited if n in by_n)
    assert all(s.cited == (s.n in cited) for s in answer.sources)
    t = answer.timings
    assert t.prompt_tokens > 0 and t.completion_tokens > 0 and 0 < t.first_token_ms <= t.total_ms


def test_the_three_outcomes_with_the_bundled_models(make_rag):
    """Refused before the model, withdrawn after it, and kept: each through the real path."""
    rag = make_rag()
    rag.ingest([SAMPLE])
    off_topic = rag.ask("Who won the 2022 FIFA World Cup?")
    assert (off_topic.outcome, off_topic.support, off_topic.answer) == ("refused", "gate", REFUSAL)
    # The model never ran: no prompt, no first token.
    assert off_topic.timings.prompt_tokens == 0 and off_topic.timings.first_token_ms == 0
    assert off_topic.answerability < rag.settings.min_answerability

    withdrawn = rag.ask("How much aluminum did Russia sell to China in 2019?")
    assert withdrawn.outcome == "unsupported" and not withdrawn.found and withdrawn.timings.prompt_tokens > 0
    assert withdrawn.support == "unsupported: other numbers"  # no passage names 2019
    assert "2019" in withdrawn.draft and "2019" not in withdrawn.answer
    closest = withdrawn.sources[0]
    says = f"The closest passage says: “{closest.evidence[0]}” [{closest.n}]"
    assert withdrawn.answer == f"{REFUSAL} {says}" and closest.cited

    kept = rag.ask(ALUMINUM)
    assert kept.outcome == "found" and kept.support == "supported" and kept.draft == ""
    assert "2 million" in kept.answer


def test_streaming_yields_pieces_before_the_end(make_rag):
    rag = make_rag()
    rag.ingest([SAMPLE])
    stream = rag.stream(ALUMINUM)
    assert stream.sources  # retrieval is done before the first piece
    pieces = []
    for piece in stream:
        if not pieces:
            assert stream.answer is None  # the answer is not complete yet
        pieces.append(piece)
    assert len(pieces) > 1
    assert stream.answer is not None and stream.answer.answer == "".join(pieces).strip()


def test_squad_hastings_top1(make_rag):
    rag = make_rag()
    report = rag.ingest([shared("eval", "squad-dev", "articles.jsonl")])
    assert len(report.added) == 2
    sources = rag.retrieve("Who was the duke in the battle of Hastings?", k=5)
    # Two passages name him: "their duke, William the Conqueror, ... Battle of Hastings" and
    # "Duke William II of Normandy ... at the Battle of Hastings"; both answer the question.
    assert "William" in sources[0].text and "Hastings" in sources[0].text
    assert any("William the Conqueror" in s.text for s in sources[:2])


def test_followup_rewrite_fixes_retrieval(make_rag):
    rag = make_rag()
    rag.ingest([SAMPLE, shared("eval", "rgb-news", "articles.jsonl")])
    followup = "What amount did he offer?"

    def hits(sources):
        return any("2 million tons" in s.text for s in sources)

    assert not hits(rag.retrieve(followup))
    chat = rag.chat()
    chat.ask("Is Russia offering to sell aluminum to the United States?")
    stream = chat.stream(followup)
    assert stream.query != followup
    assert hits(stream.sources), stream.query
    for _ in stream:
        pass
    assert len(chat.history) == 4


def test_huge_article_stays_within_the_context(make_rag, tmp_path):
    sentences = SAMPLE.read_text().replace("\n", " ")
    big = tmp_path / "big.txt"
    big.write_text((sentences + "\n") * (1_000_000 // len(sentences)))
    assert big.stat().st_size > 990_000
    rag = make_rag(top_k=30, max_tokens=64)
    report = rag.ingest([big])
    assert report.chunks > 1000
    stream = rag.stream(ALUMINUM)
    for _ in stream:
        pass
    answer = stream.answer
    assert answer.timings.prompt_tokens <= rag.settings.n_ctx - rag.settings.max_tokens
    assert 0 < len(answer.sources) < 30  # trimmed to what fits


def test_question_bounds(make_rag):
    rag = make_rag(max_question_chars=100)
    with pytest.raises(QuestionTooLong, match="limit of 100"):
        rag.ask("why? " * 50)
    with pytest.raises(QuestionError, match="empty"):
        rag.ask(" \t\x00 ")


def test_empty_index_says_how_to_add(make_rag):
    answer = make_rag().ask("Anything?")
    assert not answer.found and "rag ingest" in answer.answer and answer.sources == ()


def test_cli_ask_json(tmp_path):
    env = {**os.environ, "RAG_INDEX": str(tmp_path / "idx")}
    cmd = [sys.executable, "-m", "rag.cli"]
    subprocess.run([*cmd, "ingest", str(SAMPLE)], check=True, env=env, capture_output=True, timeout=300)
    p = subprocess.run(
        [*cmd, "ask", "--json", ALUMINUM], env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert set(data) == {
        "answer",
        "found",
        "support",
        "query",
        "sources",
        "timings",
        "draft",
        "answerability",
        "query_time",
        "task",
    }
    assert data["task"] == "answer"
    # The sample's question says nothing of time.
    assert data["query_time"]["label"] == "" and not data["query_time"]["recency"]
    assert data["found"] is True and data["support"] == "supported" and data["draft"] == ""
    assert data["query"] == ALUMINUM and "2 million" in data["answer"]
    src = data["sources"][0]
    assert {"n", "article_id", "title", "url", "date", "text", "evidence", "score", "cited"} <= set(src)
    assert set(data["timings"]) == {
        "retrieve_ms",
        "first_token_ms",
        "total_ms",
        "prompt_tokens",
        "completion_tokens",
        "tokens_per_s",
    }


def test_cli_summarize_by_id_and_by_request(tmp_path):
    env = {**os.environ, "RAG_INDEX": str(tmp_path / "idx")}
    cmd = [sys.executable, "-m", "rag.cli"]
    subprocess.run([*cmd, "ingest", str(SAMPLE)], check=True, env=env, capture_output=True, timeout=300)
    listed = subprocess.run([*cmd, "list", "--json"], env=env, capture_output=True, text=True, check=True)
    article_id = json.loads(listed.stdout.splitlines()[0])["id"]
    p = subprocess.run(
        [*cmd, "summarize", "--json", article_id], env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["task"] == "summary" and data["found"] is True
    lines = data["answer"].splitlines()
    assert len(lines) >= 3 and all(re.match(r"^- .+ \[\d+\]$", x) for x in lines), lines
    assert {s["article_id"] for s in data["sources"]} == {article_id}
    missing = subprocess.run([*cmd, "summarize", "nope", "other"], env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and "no article 'nope' in the index" in missing.stderr
    gated = subprocess.run(
        [*cmd, "summarize", "the article about the 1998 football World Cup final"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert gated.returncode == 0 and "No article in the index is about" in gated.stdout, gated.stdout


def test_cli_compare_by_ids_and_by_request(tmp_path):
    env = {**os.environ, "RAG_INDEX": str(tmp_path / "idx")}
    cmd = [sys.executable, "-m", "rag.cli"]
    articles = ROOT / "tests" / "data" / "compare" / "articles.jsonl"
    subprocess.run([*cmd, "ingest", str(articles)], check=True, env=env, capture_output=True, timeout=300)
    p = subprocess.run(
        [*cmd, "compare", "--json", "kestrel-wire", "kestrel-daily"], env=env, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["task"] == "comparison" and data["found"] is True
    assert "**240 million dollars**" in data["answer"] and "**260 million dollars**" in data["answer"]
    asked = subprocess.run(
        [*cmd, "compare", "How did outlets report the cup final?"], env=env, capture_output=True, text=True
    )
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.startswith("Compared 2 articles: Sports Wire [")
    assert "**41,000**" in asked.stdout and "Sources:" in asked.stdout
    one = subprocess.run([*cmd, "compare", "kestrel-wire"], env=env, capture_output=True, text=True)
    assert one.returncode == 1 and "2 to 5 articles, 1 given" in one.stderr
    every = subprocess.run([*cmd, "compare"], env=env, capture_output=True, text=True)
    assert every.returncode == 2 and "the index holds 11 articles" in every.stderr


def test_openvino_vectors_agree_with_torch_and_search_its_index(tmp_path, monkeypatch, real_embedder):
    """The OpenVINO backend is exported once, makes the vectors torch makes, and so may
    search an index torch built (checked at open by the index's probe)."""
    from rag.embedding import Embedder

    monkeypatch.setenv("RAG_MODELS_DIR", str(tmp_path / "models"))
    ov = Embedder(backend="openvino")
    export = tmp_path / "models" / "openvino" / "all-MiniLM-L6-v2" / "openvino" / "openvino_model.xml"
    made = export.stat().st_mtime_ns
    pt = real_embedder if real_embedder.backend == "torch" else Embedder(backend="torch")
    assert ov.agreement(pt.probe()) >= 0.99 and pt.agreement(ov.probe()) >= 0.99
    settings = Settings(index=tmp_path / "idx")
    RAG(settings, embedder=pt).ingest([SAMPLE])
    by_torch = RAG(settings, embedder=pt).retrieve(ALUMINUM, k=3)
    by_openvino = RAG(settings, embedder=ov).retrieve(ALUMINUM, k=3)
    assert [s.chunk_id for s in by_openvino] == [s.chunk_id for s in by_torch]
    assert Embedder(backend="openvino").dimension == 384 and export.stat().st_mtime_ns == made
    # Once exported, the default path runs it without sentence-transformers: the same vectors,
    # the same tokens.
    from rag.embedding import OpenVINOEmbedder, load_embedder

    lean = load_embedder(Settings())
    assert isinstance(lean, OpenVINOEmbedder) and lean.max_seq_length == ov.max_seq_length == 256
    texts = [ALUMINUM, "", "x " * 600, "Kyiv asked for security guarantees. " * 30]
    assert float((lean.encode(texts) * ov.encode(texts)).sum(axis=1).min()) > 0.9999
    assert lean.token_offsets(texts[3]) == ov.token_offsets(texts[3])
    assert lean.count_tokens(texts) == ov.count_tokens(texts)
    by_lean = RAG(settings, embedder=lean).retrieve(ALUMINUM, k=3)
    assert [s.chunk_id for s in by_lean] == [s.chunk_id for s in by_torch]
