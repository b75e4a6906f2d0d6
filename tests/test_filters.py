"""Metadata filters, MMR diversity and cross-encoder re-ranking, against exact answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rag import RAG, FilterError, Filters
from rag.cli import cli
from rag.filters import article_date

ARTICLES = [
    {
        "id": "a1",
        "title": "Harbour strike",
        "text": "Dock workers in Rotterdam went on strike over pay.",
        "date": "2024-01-15",
        "source": "Reuters",
        "author": "Jane Doe",
    },
    {
        "id": "a2",
        "title": "Harbour strike ends",
        "text": "The Rotterdam dock strike ended after pay talks.",
        "date": "Tue, 12 Mar 2024 09:00:00 GMT",
        "source": "AP",
        "author": "John Roe and Jane Doe",
    },
    {
        "id": "a3",
        "title": "Harbour expansion",
        "text": "Rotterdam harbour plans a new dock for ships.",
        "date": "June 3, 2023",
        "source": "reuters",
        "author": "Max Mustermann",
    },
    {
        "id": "a4",
        "title": "Undated harbour note",
        "text": "A dock in Rotterdam was painted.",
        "source": "Blog",
        "author": "",
    },
]


@pytest.fixture
def rag_(tmp_path, fake_embedder):
    path = tmp_path / "news.jsonl"
    path.write_text("\n".join(json.dumps(a) for a in ARTICLES))
    r = RAG(index=tmp_path / "index", embedder=fake_embedder)
    r.ingest([path])
    return r


def ids(sources) -> set[str]:
    return {s.article_id for s in sources}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(), {"a1", "a2", "a3", "a4"}),
        (Filters(source="REUTERS"), {"a1", "a3"}),
        (Filters(source=["AP", "Blog"]), {"a2", "a4"}),
        (Filters(author="jane doe"), {"a1", "a2"}),
        (Filters(since="2024-01-01"), {"a1", "a2"}),
        (Filters(until="2024-01"), {"a1", "a3"}),
        (Filters(since="2024-02", until="2024-03-12"), {"a2"}),
        (Filters(since="2023", until="2023"), {"a3"}),
        (Filters(ids=["a4", "a3"]), {"a3", "a4"}),
        (Filters(source="reuters", since="2024-01-01"), {"a1"}),
        (Filters(source="Nobody"), set()),
    ],
)
def test_filters_keep_exactly_the_matching_articles(rag_, filters, expected):
    got = ids(rag_.retrieve("Rotterdam dock strike", k=10, filters=filters))
    assert got == expected
    # The same as filtering an unfiltered exhaustive search afterwards.
    everything = rag_.retrieve("Rotterdam dock strike", k=10)
    snap = rag_.snapshot()
    allowed = {r.article_id for r in snap.chunks(snap.filter_chunks(filters))}
    assert got == ids(everything) & allowed


def test_filtered_search_on_an_ivf_index_matches_exact_search(tmp_path, fake_embedder):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    rows = [
        {
            "id": f"n{i}",
            "text": " ".join(rng.choice(words, 20)) + ".",
            "source": "odd" if i % 2 else "even",
            "date": f"2024-01-{1 + i % 28:02d}",
        }
        for i in range(1200)
    ]
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    r = RAG(index=tmp_path / "index", embedder=fake_embedder, ann_threshold=1000)
    r.ingest([path])
    snap = r.snapshot()
    assert snap.index_type != "flat"
    flt = Filters(source="odd", until="2024-01-03")
    allowed = snap.filter_chunks(flt)
    q = fake_embedder.encode_query(" ".join(words[:10]))
    exact = sorted(
        ((float(v @ q), i) for i, v in zip(allowed, snap.vectors(allowed), strict=True)), reverse=True
    )
    got = snap.search(q, 10, allowed=allowed)
    assert {i for i, _ in got} <= set(allowed)
    assert [i for i, _ in got][:5] == [i for _, i in exact][:5]


def test_no_matching_article_is_said_without_the_model(rag_):
    answer = rag_.ask("Why did they strike?", filters=Filters(source="Nobody"))
    assert not answer.found and answer.sources == ()
    assert "No article matches the filters (source=Nobody)" in answer.answer


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"since": "15/01/2024"}, "since='15/01/2024' is not a date"),
        ({"until": "2024-13"}, "until='2024-13' is not a date"),
        ({"since": "2024-03-01", "until": "2024-01-01"}, "is after until"),
        ({"source": 3}, "source must be a string"),
    ],
)
def test_bad_filter_values_are_named(kwargs, message):
    with pytest.raises(FilterError, match=message):
        Filters(**kwargs)


def test_filters_from_json_reject_unknown_keys():
    assert Filters.from_dict({"source": "AP", "ids": ["x"]}) == Filters(source=("AP",), ids=("x",))
    with pytest.raises(FilterError, match="unknown filter 'publisher'"):
        Filters.from_dict({"publisher": "AP"})


@pytest.mark.parametrize(
    ("raw", "day"),
    [
        ("2024-03-05", "2024-03-05"),
        ("2024-03-05T23:10:00+02:00", "2024-03-05"),
        ("Tue, 05 Mar 2024 10:00:00 GMT", "2024-03-05"),
        ("March 5, 2024", "2024-03-05"),
        ("", None),
        ("last week", None),
    ],
)
def test_article_dates_are_read_in_common_formats(raw, day):
    got = article_date(raw)
    assert (got.isoformat() if got else None) == day


def test_cli_ask_filters(tmp_path, monkeypatch, fake_embedder):
    from click.testing import CliRunner

    path = tmp_path / "news.jsonl"
    path.write_text("\n".join(json.dumps(a) for a in ARTICLES))
    runner = CliRunner()
    idx = str(tmp_path / "cli-index")
    # The CLI loads the real embedder: only check the filter flags reach retrieval.
    seen = {}

    def fake_retrieve(self, query, *, k=None, filters=None):
        seen["filters"] = filters
        return []

    monkeypatch.setattr(RAG, "retrieve", fake_retrieve)
    monkeypatch.setattr(RAG, "snapshot", lambda self: object())
    result = runner.invoke(
        cli,
        [
            "ask",
            "strike?",
            "--index",
            idx,
            "--source",
            "AP",
            "--source",
            "Reuters",
            "--author",
            "Doe",
            "--since",
            "2024-01",
            "--until",
            "2024-03-31",
            "--id",
            "a1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert seen["filters"] == Filters(
        source=("AP", "Reuters"), author=("Doe",), since="2024-01", until="2024-03-31", ids=("a1",)
    )
    assert json.loads(result.output)["found"] is False
    bad = runner.invoke(cli, ["ask", "strike?", "--index", idx, "--since", "soon"])
    assert bad.exit_code != 0 and "since='soon' is not a date" in bad.output


def test_mmr_drops_near_duplicates(tmp_path, fake_embedder):
    texts = [
        "Rotterdam dock strike over pay.",
        "Rotterdam dock strike over pay!",
        "Rotterdam dock strike over pay?",
        "Dock workers strike in Rotterdam harbour over wages and hours.",
        "Bakers in Lyon sell bread.",
        "A storm hit the coast of Norway.",
    ]
    path = tmp_path / "dups.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(texts)))
    plain = RAG(index=tmp_path / "index", embedder=fake_embedder)
    plain.ingest([path])
    dups = {"d0", "d1", "d2"}
    assert ids(plain.retrieve("Rotterdam dock strike over pay", k=2)) <= dups
    diverse = RAG(index=tmp_path / "index", embedder=fake_embedder, mmr=0.3)
    top2 = ids(diverse.retrieve("Rotterdam dock strike over pay", k=2))
    assert len(top2 & dups) == 1


class ReversingCrossEncoder:
    """Scores passages by how late the keyword appears: proves the order comes from it."""

    def predict(self, pairs, show_progress_bar=False):
        return [float(p.find("Rotterdam")) for _, p in pairs]


def test_reranker_reorders_the_pool(rag_):
    r = RAG(rag_.settings, embedder=rag_.embedder, reranker="fake-cross-encoder", rerank_pool=10)
    r._cross_encoder = ReversingCrossEncoder()
    got = r.retrieve("Rotterdam dock strike", k=2)
    scores = [s.text.find("Rotterdam") for s in got]
    everything = [s.text.find("Rotterdam") for s in rag_.retrieve("Rotterdam dock strike", k=10)]
    assert scores == sorted(everything, reverse=True)[:2]


@pytest.mark.slow
def test_real_cross_encoder_built_from_the_bundled_minilm(tmp_path, real_embedder):
    """No cross-encoder ships offline: build one from the bundled MiniLM weights (its
    classification head is untrained) to prove the loading and scoring path is real."""
    import torch
    from sentence_transformers import CrossEncoder

    from rag.embedding import bundled_embedder_path

    torch.manual_seed(0)
    folder = tmp_path / "minilm-cross-encoder"
    CrossEncoder(str(bundled_embedder_path()), num_labels=1, device="cpu").save(str(folder))
    path = tmp_path / "news.jsonl"
    path.write_text("\n".join(json.dumps(a) for a in ARTICLES))
    r = RAG(index=tmp_path / "index", embedder=real_embedder, reranker=str(folder), rerank_pool=4)
    r.ingest([path])
    got = r.retrieve("Why did the Rotterdam dock workers strike?", k=2)
    ce = CrossEncoder(str(folder), device="cpu")
    pool = r.retrieve("Why did the Rotterdam dock workers strike?", k=4)
    scores = ce.predict(
        [("Why did the Rotterdam dock workers strike?", f"{s.title}\n{s.text}") for s in pool]
    )
    best = [pool[i].chunk_id for i in np.argsort(-np.asarray(scores))[:2]]
    assert [s.chunk_id for s in got] == best
    with pytest.raises(Exception, match="cannot load re-ranker 'no/such/model'"):
        RAG(index=tmp_path / "index", embedder=real_embedder, reranker="no/such/model").retrieve("x")
