"""`rag bench`: ingest, query and vector-search speed, each figure next to the raw component
doing the same work in the same run with the same settings, and their ratio.

- ingest: `rag.ingest.ingest` on a JSONL corpus into a fresh index, against
  `SentenceTransformer.encode` alone on the very chunk texts ingest embeds (same batch size);
- query: every stage of an answer, timed by calling the functions the pipeline calls, then
  the pipeline's own answer, against FAISS alone on the identical query vector and
  llama.cpp alone (`Llama.create_completion`) on the identical prompt tokens;
- cold start: a fresh `rag ask` process to its first token, against a fresh process that
  loads llama.cpp alone and reads the same prompt;
- scale: exact and IVF search at 10k/100k/1M synthetic vectors drawn from a Gaussian
  mixture fitted to real embeddings, each size measured in a fresh process (clean RSS).

The library never prints: `run_bench` reports progress through a callback and returns a
JSON-ready dict; `format_report` turns it into the table `rag bench` prints.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import Settings
from .types import Article

if TYPE_CHECKING:
    import numpy as np

    from .embedding import Embedder
    from .generation import LlamaCppGenerator

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""progress(label, done, total): a new label starts a new phase."""

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "russia-us-rare-earths.txt"

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

FULL_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (5_000,)

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
}


@dataclass(frozen=True)
class BenchOptions:
    """What to measure. None picks the full or the `quick` default.

    Args:
        quick: tiny sizes for tests (under a minute on an idle 2-core machine): ~80 chunks,
            2 questions with k <= 2 and max_tokens <= 16, one 5k scale point, no 1M.
        articles: a JSONL dump to ingest instead of the generated corpus.
        chunks: chunks of generated articles (default 2000, quick 60).
        sample_copies: copies of the bundled sample, as distinct articles (20, quick 2).
        questions: the question set (default `QUESTIONS`, quick its first 2).
        sizes: vector counts of the scale section (10k, 100k, 1M; quick 5k).
        scale_queries: synthetic queries per scale point (200, quick 50).
        fit_texts: reference texts embedded, besides the corpus, to fit the mixture
            (1500, quick 48).
        kv_probes: questions also answered from an empty llama.cpp cache, to measure what
            the shared prompt prefix saves (all; quick 1).
        repeat: ingest / encode-alone pairs, run ABBA; the best of each is reported.
        cold_start: also time fresh processes (`rag ask`, `rag --help`, `rag list`).
        sections: which of ingest, query, startup, scale, web to run (query needs ingest).
        pages: generated article pages the web section serves on 127.0.0.1 (100, quick 10).
    """

    quick: bool = False
    articles: Path | None = None
    chunks: int | None = None
    sample_copies: int | None = None
    questions: tuple[str, ...] | None = None
    sizes: tuple[int, ...] | None = None
    scale_queries: int | None = None
    fit_texts: int | None = None
    kv_probes: int | None = None
    repeat: int = 1
    cold_start: bool = True
    sections: tuple[str, ...] = ("ingest", "query", "startup", "scale", "web")
    pages: int | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def pick(self, name: str, full: Any, quick: Any) -> Any:
        value = getattr(self, name)
        return value if value is not None else (quick if self.quick else full)


# -- small measuring tools -------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 1]; 0.0 for no values."""
    if not values:
        return 0.0
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _p(values: Sequence[float], digits: int = 2) -> dict[str, float]:
    return {"p50": round(percentile(values, 0.5), digits), "p95": round(percentile(values, 0.95), digits)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _proc_status(key: str) -> int:
    """A memory line of /proc/self/status in bytes (0 where there is none)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes() -> int:
    return _proc_status("VmRSS")


def peak_rss_bytes() -> int:
    return _proc_status("VmHWM")


def reset_peak_rss() -> bool:
    """Start the peak (VmHWM) over from the current RSS; False where Linux refuses."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _TimedEmbedder:
    """The embedder with the time spent in each of its methods added up."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.seconds = {"encode": 0.0, "token_offsets": 0.0, "count_tokens": 0.0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _timed(self, name: str, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return getattr(self._inner, name)(*args, **kwargs)
        finally:
            self.seconds[name] += time.perf_counter() - t

    def encode(self, texts: Sequence[str], **kwargs: Any) -> Any:
        return self._timed("encode", texts, **kwargs)

    def token_offsets(self, text: str) -> Any:
        return self._timed("token_offsets", text)

    def count_tokens(self, texts: Sequence[str]) -> Any:
        return self._timed("count_tokens", texts)


@contextlib.contextmanager
def _timed_method(owner: Any, name: str, into: dict[str, float]) -> Iterator[None]:
    """Add the time spent in `owner.name` to `into[name]` while the block runs."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            into[name] = into.get(name, 0.0) + time.perf_counter() - t

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, original)


# -- the corpus ------------------------------------------------------------------------------

# Generated news: a dozen desks, each with its own actors, subjects and verbs, so the corpus
# has topics (clusters) as a news archive does.
_DESKS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "economy": (
        ("the central bank", "the finance ministry", "the statistics office", "retailers", "the IMF"),
        ("inflation", "interest rates", "consumer spending", "the trade deficit", "wages", "the budget"),
        ("rose", "fell", "stalled", "recovered", "slowed", "climbed", "eased"),
    ),
    "energy": (
        ("the grid operator", "the oil ministry", "a pipeline company", "the nuclear regulator", "refiners"),
        ("gas prices", "crude output", "power demand", "wind capacity", "coal imports", "battery storage"),
        ("expanded", "cut", "doubled", "suspended", "restarted", "capped"),
    ),
    "politics": (
        ("the prime minister", "opposition leaders", "the senate", "the governor", "coalition partners"),
        ("the reform bill", "the coalition", "voter turnout", "the referendum", "the cabinet", "the vote"),
        ("approved", "rejected", "delayed", "debated", "blocked", "endorsed"),
    ),
    "climate": (
        ("climate scientists", "the weather service", "environment ministers", "coastal towns", "insurers"),
        ("sea levels", "the heatwave", "emissions", "the drought", "rainfall", "flood defences"),
        ("worsened", "threatened", "reduced", "monitored", "exceeded", "measured"),
    ),
    "technology": (
        ("the chipmaker", "a start-up", "app developers", "cloud providers", "security researchers"),
        ("the new processor", "user data", "the software update", "the AI model", "the data centre"),
        ("launched", "patched", "leaked", "licensed", "tested", "unveiled"),
    ),
    "health": (
        ("hospital staff", "the health ministry", "researchers", "nurses' unions", "the drug agency"),
        ("waiting times", "the outbreak", "the vaccine", "cancer screening", "hospital beds", "drug prices"),
        ("increased", "approved", "halted", "funded", "expanded", "tracked"),
    ),
    "sports": (
        ("the coach", "the home side", "the champions", "the federation", "the team captain"),
        ("the final", "the transfer", "the season", "the league title", "the stadium", "the tournament"),
        ("won", "lost", "secured", "overturned", "celebrated", "postponed"),
    ),
    "courts": (
        ("the supreme court", "prosecutors", "the defence team", "the judge", "the appeals court"),
        ("the verdict", "the lawsuit", "the sentence", "the ruling", "the indictment", "the appeal"),
        ("upheld", "overturned", "dismissed", "filed", "granted", "reviewed"),
    ),
    "transport": (
        ("the rail operator", "airlines", "the port authority", "commuters", "the transport minister"),
        ("ticket prices", "the new line", "freight volumes", "flight delays", "the bridge", "road tolls"),
        ("opened", "cancelled", "raised", "rerouted", "resumed", "disrupted"),
    ),
    "agriculture": (
        ("grain farmers", "the agriculture ministry", "dairy producers", "fishermen", "supermarkets"),
        ("the wheat harvest", "milk prices", "fish stocks", "crop yields", "food exports", "fertiliser"),
        ("improved", "collapsed", "protected", "subsidised", "shrank", "recovered"),
    ),
    "science": (
        ("astronomers", "the space agency", "physicists", "biologists", "geologists"),
        ("the telescope", "the probe", "the experiment", "the fossil", "the new species", "the genome"),
        ("discovered", "observed", "confirmed", "launched", "mapped", "sequenced"),
    ),
    "culture": (
        ("the museum", "the festival organisers", "the publisher", "the orchestra", "critics"),
        ("the exhibition", "the novel", "ticket sales", "the premiere", "the award", "the collection"),
        ("opened", "acquired", "praised", "cancelled", "restored", "announced"),
    ),
}
_PLACES = (
    "Lisbon Nairobi Osaka Toronto Lyon Gdansk Chennai Leeds Valparaiso Tbilisi Dundee Brisbane "
    "Krakow Accra Seville Tampere Rotterdam Bergen Cordoba Hanoi Quebec Bilbao Malmo"
).split()
_NAMES = (
    "Ana Ferreira",
    "James Okafor",
    "Mei Tanaka",
    "Lukas Brandt",
    "Sofia Rossi",
    "Omar Haddad",
    "Elena Petrova",
    "Daniel Kim",
    "Priya Nair",
    "Tomasz Nowak",
    "Grace Mensah",
    "Carlos Ruiz",
)
_MONTHS = "January February March April May June July August September October November December".split()
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_TEMPLATES = (
    "{Actor} said on {day} that {thing} had {verb} by {pct} percent in {place}.",
    "In {place}, {actor} {verb} {thing} after weeks of talks, {person} told reporters.",
    "\u201cWe did not expect {thing} to move this fast,\u201d said {person}, who speaks for {actor}.",
    "Figures published in {month} showed that {thing} {verb} for the {ordinal} time this year.",
    "{Actor} warned that {thing} could cost {place} about {money} million dollars by {year}.",
    "The decision affects {thousands} people in {place} and the surrounding region.",
    "{person} of {actor} argued that {thing} and {thing2} were closely linked.",
    "Critics in {place} said {actor} had ignored {thing2} for too long.",
    "{Actor} plans to review {thing} again in {month}, according to a statement.",
    "Since {year}, {thing} has {verb} in {place} more than anywhere else in the country.",
    "Officials expect {thing2} to be discussed when {actor} meet in {place} on {day}.",
    "A report by {actor} found that {thing} {verb} while {thing2} stayed flat.",
)


def _sentence(rng: random.Random, desk: str) -> str:
    actors, things, verbs = _DESKS[desk]
    actor = rng.choice(actors)
    thing, thing2 = rng.sample(things, 2)
    return rng.choice(_TEMPLATES).format(
        actor=actor,
        Actor=actor[0].upper() + actor[1:],
        thing=thing,
        thing2=thing2,
        verb=rng.choice(verbs),
        pct=rng.randint(2, 40),
        place=rng.choice(_PLACES),
        person=rng.choice(_NAMES),
        day=rng.choice(_DAYS),
        month=rng.choice(_MONTHS),
        ordinal=rng.choice(("second", "third", "fourth", "fifth")),
        money=rng.randint(5, 900),
        year=rng.randint(2015, 2031),
        thousands=f"{rng.randint(2, 950)},000",
    )


def generated_article(i: int, rng: random.Random) -> Article:
    """A news-like article of 8 to 24 sentences in paragraphs, on one desk's topic."""
    desk = rng.choice(sorted(_DESKS))
    _, things, verbs = _DESKS[desk]
    left = rng.randint(8, 24)
    paragraphs = []
    while left > 0:
        n = min(left, rng.randint(2, 5))
        paragraphs.append(" ".join(_sentence(rng, desk) for _ in range(n)))
        left -= n
    place = rng.choice(_PLACES)
    return Article(
        id=f"gen-{i:06d}",
        text="\n".join(paragraphs),
        title=f"{rng.choice(things).capitalize()} {rng.choice(verbs)} in {place}",
        date=f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        url=f"https://news.example/{desk}/{i}",
        source="bench-generated",
    )


def default_corpus(
    n_chunks: int, *, copies: int, settings: Settings, embedder: Any, seed: int = 0
) -> list[Article]:
    """`copies` of the bundled sample as distinct articles, then generated articles until
    they make at least `n_chunks` chunks (counted with the real chunker)."""
    from .ingest import chunk_article
    from .loaders import load_file

    out: list[Article] = []
    if copies:
        if not SAMPLE.exists():
            from .errors import ConfigError

            raise ConfigError(f"the bundled sample {SAMPLE} is missing; pass --articles FILE.jsonl")
        sample = next(a for a in load_file(SAMPLE) if isinstance(a, Article))
        for i in range(copies):
            out.append(
                Article(id=f"sample-{i:03d}", text=sample.text, title=sample.title, source="bench-sample")
            )
    rng = random.Random(seed)
    total = 0
    i = 0
    while total < n_chunks:
        a = generated_article(i, rng)
        total += len(chunk_article(a, embedder, settings)[0])
        out.append(a)
        i += 1
    return out


def write_jsonl(articles: Sequence[Article], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for a in articles:
            record = {"id": a.id, "title": a.title, "text": a.text, "date": a.date, "url": a.url}
            record["source"] = a.source
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def reference_texts(limit: int) -> list[str]:
    """Real English paragraphs that every Python install has: the docstrings of the standard
    library, read with `ast` (nothing imported). Used to fit the scale section's mixture."""
    if limit <= 0:
        return []
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[str] = []
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                for para in re.split(r"\n\s*\n", doc or ""):
                    para = " ".join(para.split())
                    if len(para) > 60 and not para.startswith((">>>", "$", "{", "[")):
                        found.append(para)
    step = max(1, len(found) // limit)
    return found[::step][:limit]


# -- synthetic vectors -----------------------------------------------------------------------


@dataclass(frozen=True)
class Mixture:
    """A Gaussian mixture over embedding space (full covariances, as Cholesky factors)."""

    weights: np.ndarray
    means: np.ndarray
    chols: np.ndarray
    fitted_on: int


def fit_mixture(vectors: np.ndarray, *, components: int, seed: int = 0) -> Mixture:
    """Fit a full-covariance Gaussian mixture to real embeddings (scikit-learn, which
    sentence-transformers depends on). Full covariances keep the anisotropy that makes
    real neighbourhoods: diagonal ones make ANN search look easier than it is."""
    import numpy as np
    from sklearn.mixture import GaussianMixture

    x = np.unique(np.asarray(vectors, dtype=np.float64), axis=0)
    k = max(1, min(components, len(x) // 20))
    gm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, max_iter=100, random_state=seed).fit(x)
    return Mixture(
        weights=np.asarray(gm.weights_, dtype=np.float64),
        means=gm.means_.astype(np.float32),
        chols=np.linalg.cholesky(gm.covariances_).astype(np.float32),
        fitted_on=len(x),
    )


def sample_mixture(mix: Mixture, n: int, *, seed: int) -> np.ndarray:
    """`n` unit vectors drawn from the mixture, float32, in blocks (no float64 copy)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    comp = rng.choice(len(mix.weights), size=n, p=mix.weights / mix.weights.sum())
    d = mix.means.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    for c in range(len(mix.weights)):
        idx = np.flatnonzero(comp == c)
        for lo in range(0, len(idx), 65536):
            part = idx[lo : lo + 65536]
            z = rng.standard_normal((len(part), d), dtype=np.float32)
            out[part] = z @ mix.chols[c].T + mix.means[c]
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def neighbour_profile(x: np.ndarray, n: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean cosine, median top-1 and top-10 neighbour cosine of up to `n` vectors: how the
    synthetic vectors compare with the real ones they were fitted on."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = x[rng.choice(len(x), min(n, len(x)), replace=False)] if len(x) > n else x
    g = x @ x.T
    np.fill_diagonal(g, -np.inf)
    top = -np.sort(-g, axis=1)
    m = len(x)
    mean = (float(x.sum(0) @ x.sum(0)) - m) / max(1, m * (m - 1))
    return {
        "mean_cos": round(mean, 3),
        "top1_cos": round(float(np.median(top[:, 0])), 3),
        "top10_cos": round(float(np.median(top[:, min(9, m - 2)])), 3) if m > 2 else 0.0,
    }


# -- ingest ----------------------------------------------------------------------------------


def bench_ingest(
    corpus: Path,
    *,
    settings: Settings,
    embedder: Embedder,
    workdir: Path,
    repeat: int = 1,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], np.ndarray, Path]:
    """Ingest `corpus` (JSONL) into fresh indexes through `rag.ingest.ingest`, against
    `SentenceTransformer.encode` alone on the same chunk texts with the same batch size.
    Returns the figures, the encoded vectors, and the last index built."""
    import numpy as np

    from . import store
    from .ingest import chunk_article, embed_text, ingest
    from .loaders import iter_articles

    size_mb = corpus.stat().st_size / 1e6
    # The corpus repeats the sample on purpose and its generated articles share templates:
    # every one is indexed (copies are not collapsed), as the encode-alone side counts them.
    # Their signatures are still computed, so ingest's cost includes it.
    settings = settings.with_(max_file_mb=max(settings.max_file_mb, size_mb * 1.1 + 1), dedup_threshold=0)
    by_id: dict[str, Article] = {}
    for a in iter_articles([corpus], max_file_mb=settings.max_file_mb):
        if isinstance(a, Article):
            by_id[a.id] = a  # the last record of an id wins, as in ingest
    texts: list[str] = []
    for a in by_id.values():
        chunks, title = chunk_article(a, embedder, settings)
        texts += [embed_text(title, c.text) for c in chunks]
    n_bytes = sum(len(a.text.encode("utf-8")) for a in by_id.values())
    if not texts:
        from .errors import ConfigError

        raise ConfigError(f"{corpus} holds no article text to ingest")
    model = embedder.model
    bs = settings.batch_size
    model.encode(texts[: 2 * bs], batch_size=bs, normalize_embeddings=True, show_progress_bar=False)

    # ST sorts a call's texts by length; slicing the length-sorted list gives it the same
    # batches as one call while letting the progress bar move.
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    step = 16 * bs

    def encode_alone() -> tuple[float, np.ndarray]:
        out = np.zeros((len(texts), embedder.dimension), dtype=np.float32)
        t = time.perf_counter()
        for lo in range(0, len(order), step):
            idx = order[lo : lo + step]
            out[idx] = model.encode(
                [texts[i] for i in idx],
                batch_size=bs,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            if progress:
                progress("Encoding alone", min(lo + step, len(texts)), len(texts))
        return time.perf_counter() - t, out

    def ingest_once(n: int) -> dict[str, Any]:
        timed = _TimedEmbedder(embedder)
        inside: dict[str, float] = {}
        s = settings.with_(index=workdir / f"ingest-{n}")

        def cb(done: int, total: int) -> None:
            if progress:
                progress("Ingesting", done, total)

        with _timed_method(store.Transaction, "commit", inside):
            t = time.perf_counter()
            report = ingest([corpus], settings=s, embedder=timed, rebuild=True, progress=cb)  # type: ignore[arg-type]
            seconds = time.perf_counter() - t
        return {
            "index": s.index,
            "seconds": seconds,
            "report": report,
            "encode_s": timed.seconds["encode"],
            "tokenise_s": timed.seconds["token_offsets"] + timed.seconds["count_tokens"],
            "commit_s": inside.get("commit", 0.0),
        }

    raws: list[float] = []
    runs: list[dict[str, Any]] = []
    vectors = None
    # ABBA: with two or more repeats, drift on a shared machine hurts both sides alike.
    plan = (
        ["raw", "ingest"] * repeat
        if repeat == 1
        else (["raw", "ingest", "ingest", "raw"] * repeat)[: 2 * repeat]
    )
    for n, what in enumerate(plan):
        if what == "raw":
            s_raw, vectors = encode_alone()
            raws.append(s_raw)
        else:
            runs.append(ingest_once(n))
    best = min(runs, key=lambda r: r["seconds"])
    raw = min(raws)
    total = best["seconds"]
    report = best["report"]
    chunks = report.chunks
    articles = len(report.added) + len(report.updated)
    result = {
        "articles": articles,
        "chunks": chunks,
        "text_mb": round(n_bytes / 1e6, 3),
        "batch_size": bs,
        "failed": len(report.failed),
        "ingest_s": round(total, 3),
        "articles_per_s": round(articles / total, 2),
        "chunks_per_s": round(chunks / total, 2),
        "mb_per_s": round(n_bytes / 1e6 / total, 4),
        "encode_alone_s": round(raw, 3),
        "encode_alone_chunks_per_s": round(len(texts) / raw, 2),
        "ratio": _ratio(total, raw),
        "inside_ingest_s": {
            "encode": round(best["encode_s"], 3),
            "tokenise_for_chunking": round(best["tokenise_s"], 3),
            "commit_sqlite_fts_faiss_fsync": round(best["commit_s"], 3),
            "other_parse_chunk_hash": round(
                total - best["encode_s"] - best["tokenise_s"] - best["commit_s"], 3
            ),
        },
        "outside_encoding_share": round((total - best["encode_s"]) / total, 4),
        "runs": [
            {"what": w, "seconds": round(v, 3)}
            for w, v in zip(plan, _interleave(plan, raws, [r["seconds"] for r in runs]), strict=True)
        ],
    }
    assert vectors is not None
    return result, vectors, best["index"]


def _interleave(plan: Sequence[str], raws: Sequence[float], runs: Sequence[float]) -> list[float]:
    it_raw, it_run = iter(raws), iter(runs)
    return [next(it_raw) if w == "raw" else next(it_run) for w in plan]


# -- query -----------------------------------------------------------------------------------


def shared_prefix(generator: LlamaCppGenerator, today: str = "") -> list[int]:
    """The prompt tokens every question shares (system prompt, worked example, template):
    what llama.cpp keeps in its KV cache from one question to the next. `today`: the date
    the system prompt names over dated articles."""
    from . import prompt as P

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
    embedder: Embedder,
    generator: LlamaCppGenerator,
    questions: Sequence[str],
    kv_probes: int | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-stage latency of answering `questions` over `index`, warm, against FAISS alone
    and llama.cpp alone. Returns the figures and, for the cold start, one prompt."""
    import numpy as np

    from . import prompt as P
    from .guard import passages_for_model
    from .pipeline import RAG
    from .retrieval import evidence, search

    settings = settings.with_(index=index)
    rag = RAG(settings, embedder=embedder, generator=generator)
    snap = rag.snapshot()
    if snap is None or len(snap) == 0:
        from .errors import IndexNotFound

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
        embedder.model.encode(
            [q], batch_size=settings.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
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
        sources = rag.retrieve(q, k=k)
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
        entry: dict[str, Any] = _p(ours)
        if raw_f is not None:
            pairs = [(a, b) for a, b in ((ours_f(r), raw_f(r)) for r in rows) if a is not None and b]
            entry["raw"] = _p([b for _, b in pairs])
            entry["raw_is"] = raw_name
            entry["ratio_p50"] = _ratio(entry["p50"], entry["raw"]["p50"])
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
    out["prompt_tokens"] = _p(prompt_tokens, 0)
    out["prefill_tokens_per_s"] = round(
        percentile([n / (ms / 1000) for n, ms in zip(new_tokens, with_prefix, strict=True) if ms > 0], 0.5), 1
    )
    out["kv_prefix"] = {
        "prefix_tokens": prefix,
        "ttft_ms_with_prefix_cached": _p([r["llama_ttft_ms"] for r in probed]),
        "ttft_ms_empty_cache": _p(without),
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


# -- fresh processes -------------------------------------------------------------------------


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
    from .client import find

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
        "ratio_to_warm": _ratio(median, warm_ttft_s),
    }


def bench_cold_start(
    index: Path, *, settings: Settings, prompt: dict[str, Any], workdir: Path, runs: int = 1
) -> dict[str, Any]:
    """A fresh `rag ask` to its first token (models loaded, index opened and verified)
    against a fresh Python that loads llama.cpp alone and reads the same prompt tokens;
    `runs` pairs, ABBA, the best of each reported."""
    from .generation import has_amx
    from .models import resolve_model

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
        "ratio_first_token": _ratio(ours["first_s"], alone["first_s"]),
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
        "help_ratio_to_bare_python": _ratio(helped[0], bare[0]),
        "list_ratio_to_bare_python": _ratio(listed[0], bare[0]),
    }


# -- scale -----------------------------------------------------------------------------------


def scale_point(
    mix: Mixture, n: int, *, queries: int, question_vectors: np.ndarray, pool: int, seed: int
) -> dict[str, Any]:
    """Exact and IVF search over `n` mixture vectors. Run it in a fresh process: the RSS
    deltas are then the indexes' own."""
    import faiss
    import numpy as np

    from .store import build_ann, flat_index

    xb = sample_mixture(mix, n, seed=seed + n)
    xq = sample_mixture(mix, queries, seed=seed + 7)
    ids = np.arange(n, dtype=np.int64)
    _, truth = faiss.knn(xq, xb, 10, metric=faiss.METRIC_INNER_PRODUCT)
    qv = np.ascontiguousarray(question_vectors, dtype=np.float32)

    def latencies(index: Any, vecs: np.ndarray, limit: int) -> list[float]:
        out = []
        for v in vecs[:limit]:
            t = time.perf_counter()
            index.search(v.reshape(1, -1), pool)
            out.append((time.perf_counter() - t) * 1000)
        return out

    base = rss_bytes()
    peak_ok = reset_peak_rss()
    t = time.perf_counter()
    ann, params = build_ann(xb, ids)
    ann_build = time.perf_counter() - t
    ann_rss = rss_bytes() - base
    ann_peak = peak_rss_bytes() - base if peak_ok else None
    _, found = ann.search(xq, 10)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]))
    ann_lat = latencies(ann, xq, queries)
    ann_q = latencies(ann, qv, len(qv))
    ann_phase_peak = peak_rss_bytes() if peak_ok else None

    base = rss_bytes()
    t = time.perf_counter()
    flat = flat_index(xb.shape[1])
    flat.add_with_ids(xb, ids)
    flat_build = time.perf_counter() - t
    flat_rss = rss_bytes() - base
    flat_limit = max(10, min(queries, int(2e7 / n)))  # exact search at 1M is slow: fewer queries
    flat_lat = latencies(flat, xq, flat_limit)
    flat_q = latencies(flat, qv, min(len(qv), flat_limit))
    mib = 2**20
    return {
        "vectors": n,
        "dimension": int(xb.shape[1]),
        "queries": queries,
        "ann": {
            **params,
            "build_s": round(ann_build, 2),
            "rss_mib": round(ann_rss / mib, 1),
            "build_peak_mib": round(ann_peak / mib, 1) if ann_peak is not None else None,
            "search_ms": _p(ann_lat, 3),
            "question_search_ms": _p(ann_q, 3),
            "recall_at_10": round(recall, 4),
        },
        "exact": {
            "build_s": round(flat_build, 2),
            "rss_mib": round(flat_rss / mib, 1),
            "search_ms": _p(flat_lat, 3),
            "question_search_ms": _p(flat_q, 3),
            "queries_timed": flat_limit,
        },
        "search_speedup_p50": _ratio(percentile(flat_lat, 0.5), percentile(ann_lat, 0.5)),
        "input_mib": round(xb.nbytes / mib, 1),
        # The process at its largest while it held the input vectors and built, tuned and
        # searched the IVF index: what a migration at this size needs (exact index not yet built).
        "ann_phase_peak_rss_mib": round(ann_phase_peak / mib, 1) if ann_phase_peak else None,
        "process_peak_rss_mib": round(peak_rss_bytes() / mib, 1),
    }


def bench_scale(
    mix: Mixture,
    sizes: Sequence[int],
    *,
    queries: int,
    question_vectors: np.ndarray,
    embed_p50_ms: float,
    settings: Settings,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """`scale_point` at each size, each in a fresh process, plus the retrieval latency the
    store would give there (its index type at that size, after the query embedding)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = max(4 * settings.top_k, 20)
    out = []
    for i, n in enumerate(sizes):
        if progress:
            progress(f"Scale {n:,} vectors", i, len(sizes))
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
            point = ex.submit(
                scale_point,
                mix,
                n,
                queries=queries,
                question_vectors=question_vectors,
                pool=pool,
                seed=seed,
            ).result()
        uses = "ann" if n >= settings.ann_threshold else "exact"
        point["store_uses"] = uses
        point["ann_threshold"] = settings.ann_threshold
        point["retrieval_p50_ms"] = round(embed_p50_ms + point[uses]["question_search_ms"]["p50"], 2)
        out.append(point)
        if progress:
            progress(f"Scale {n:,} vectors", i + 1, len(sizes))
    return out


# -- the whole run ---------------------------------------------------------------------------


def run_bench(
    settings: Settings,
    options: BenchOptions,
    *,
    embedder: Embedder | None = None,
    generator: LlamaCppGenerator | None = None,
    progress: Progress | None = None,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Every section of the bench; returns the JSON-ready result (see `format_report`)."""
    import numpy as np

    started = time.perf_counter()
    if options.quick:
        settings = settings.with_(top_k=min(settings.top_k, 2), max_tokens=min(settings.max_tokens, 16))
    result: dict[str, Any] = {
        "quick": options.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "settings": {
            "embedder": settings.embedder,
            "embed_backend": settings.embed_backend,
            "model": settings.model,
            "batch_size": settings.batch_size,
            "threads": settings.threads,
            "n_ctx": settings.n_ctx,
            "top_k": settings.top_k,
            "max_tokens": settings.max_tokens,
            "temperature": settings.temperature,
            "fusion": settings.fusion,
            "ann_threshold": settings.ann_threshold,
        },
    }
    sections = set(options.sections)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rag-bench-")))
        workdir.mkdir(parents=True, exist_ok=True)
        loads: dict[str, float] = {}
        if embedder is None:
            from .embedding import Embedder

            t = time.perf_counter()
            embedder = Embedder(
                settings.embedder, batch_size=settings.batch_size, backend=settings.embed_backend
            )
            loads["embedder_s"] = round(time.perf_counter() - t, 2)

        index: Path | None = None
        vectors = None
        if "ingest" in sections or "query" in sections:
            if options.articles is not None:
                corpus = Path(options.articles)
                result["corpus"] = {"source": str(corpus)}
            else:
                n_chunks = options.pick("chunks", 2000, 60)
                copies = options.pick("sample_copies", 20, 2)
                articles = default_corpus(
                    n_chunks, copies=copies, settings=settings, embedder=embedder, seed=options.seed
                )
                corpus = workdir / "corpus.jsonl"
                write_jsonl(articles, corpus)
                result["corpus"] = {
                    "source": f"{copies} copies of {SAMPLE.name} + generated articles of {n_chunks}+ chunks",
                }
            log.info("bench: ingesting %s", corpus)
            result["ingest"], vectors, index = bench_ingest(
                corpus,
                settings=settings,
                embedder=embedder,
                workdir=workdir,
                repeat=max(1, options.repeat),
                progress=progress,
            )
        questions = list(options.questions or (QUESTIONS[:2] if options.quick else QUESTIONS))
        embed_ms: list[float] = []
        for q in questions:
            t = time.perf_counter()
            embedder.encode_query(q)
            embed_ms.append((time.perf_counter() - t) * 1000)
        question_vectors = embedder.encode(questions)

        prompt: dict[str, Any] = {}
        if "query" in sections and index is not None:
            if generator is None:
                from .generation import local_generator

                t = time.perf_counter()
                generator = local_generator(settings)
                loads["generator_s"] = round(time.perf_counter() - t, 2)
            log.info("bench: %d questions", len(questions))
            result["query"], prompt = bench_query(
                index,
                settings=settings,
                embedder=embedder,
                generator=generator,
                questions=questions,
                kv_probes=options.pick("kv_probes", None, 1),
                progress=progress,
            )
        result["model_load"] = loads

        if options.cold_start and "startup" in sections and index is not None:
            if progress:
                progress("Fresh processes", 0, 2)
            if prompt:
                result["cold_start"] = bench_cold_start(
                    index, settings=settings, prompt=prompt, workdir=workdir, runs=1 if options.quick else 2
                )
                warm = result.get("query", {}).get("stages", {}).get("ttft_ms", {}).get("p50")
                result["cold_start"]["server"] = bench_server_ask(
                    index,
                    settings=settings,
                    questions=questions,
                    warm_ttft_s=warm / 1000 if warm else None,
                    runs=1 if options.quick else 5,
                )
            if progress:
                progress("Fresh processes", 1, 2)
            result["startup"] = bench_startup(index, runs=3 if options.quick else 5)
            if progress:
                progress("Fresh processes", 2, 2)

        if "scale" in sections:
            n_fit = options.pick("fit_texts", 1500, 48)
            ref = reference_texts(n_fit)

            def ref_progress(done: int, total: int) -> None:
                if progress:
                    progress("Embedding reference texts", done, total)

            ref_progress(0, len(ref))
            parts = [embedder.encode(ref, progress=ref_progress)]
            if vectors is not None:
                parts.append(vectors)
            real = np.vstack([p for p in parts if len(p)])
            t = time.perf_counter()
            mix = fit_mixture(real, components=16 if not options.quick else 4, seed=options.seed)
            fit_s = time.perf_counter() - t
            synthetic = sample_mixture(mix, min(2000, len(real)), seed=options.seed + 1)
            result["scale_vectors"] = {
                "method": "full-covariance Gaussian mixture fitted to real embeddings, sampled, normalised",
                "components": len(mix.weights),
                "fitted_on": mix.fitted_on,
                "fit_s": round(fit_s, 2),
                "real_profile": neighbour_profile(real),
                "synthetic_profile": neighbour_profile(synthetic),
            }
            sizes = options.pick("sizes", FULL_SIZES, QUICK_SIZES)
            result["scale"] = bench_scale(
                mix,
                sizes,
                queries=options.pick("scale_queries", 200, 50),
                question_vectors=question_vectors,
                embed_p50_ms=percentile(embed_ms, 0.5),
                settings=settings,
                seed=options.seed,
                progress=progress,
            )
            result["scale_query_embedding_ms"] = _p(embed_ms)
        if "web" in sections:
            result["web"] = bench_web(
                options.pick("pages", 100, 10),
                settings=settings.with_(index=workdir / "web-index"),
                embedder=embedder,
                seed=options.seed,
            )
    result["targets"] = targets(result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def bench_web(n_pages: int, *, settings: Settings, embedder: Embedder, seed: int = 0) -> dict[str, Any]:
    """Generated articles served as HTML pages (with navigation and a footer) by a server on
    127.0.0.1: `rag ingest URL...` (fetch, extract, dedup, chunk, embed, commit) against
    fetching and extracting alone."""
    import html
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from . import web
    from .ingest import ingest

    rng = random.Random(seed + 7)
    pages: dict[str, bytes] = {}
    for i in range(n_pages):
        a = generated_article(i, rng)
        body = "".join(f"<p>{html.escape(p)}</p>" for p in a.text.split("\n"))
        pages[f"/news/{i}.html"] = (
            f"<!doctype html><html><head><title>{html.escape(a.title)}</title></head><body>"
            "<nav><a href='/'>Home</a> <a href='/world'>World</a> <a href='/sport'>Sport</a></nav>"
            f"<article><h1>{html.escape(a.title)}</h1>{body}</article>"
            "<footer>Copyright Bench News. Subscribe to our newsletter.</footer></body></html>"
        ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = pages.get(self.path, b"")
            self.send_response(200 if data else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        urls = [f"http://127.0.0.1:{server.server_address[1]}{p}" for p in pages]
        t = time.perf_counter()
        with web.client() as http:
            for u in urls:
                web.fetch_page(http, u, max_file_mb=settings.max_file_mb)
        fetch_s = time.perf_counter() - t
        t = time.perf_counter()
        report = ingest(urls, settings=settings, embedder=embedder)
        ingest_s = time.perf_counter() - t
    finally:
        server.shutdown()
        server.server_close()
    return {
        "pages": n_pages,
        "chunks": report.chunks,
        "added": len(report.added),
        "failed": len(report.failed),
        "fetch_extract_s": round(fetch_s, 2),
        "fetch_extract_pages_per_s": round(n_pages / fetch_s, 1),
        "ingest_s": round(ingest_s, 2),
        "pages_per_s": round(n_pages / ingest_s, 1),
    }


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets with the measured value and whether it was met (None: not run)."""
    q = result.get("query", {}).get("stages", {})
    scale = {p["vectors"]: p for p in result.get("scale", [])}
    at_1m = scale.get(1_000_000, {})
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
    lines += ["", "TARGETS"]
    for t in r["targets"]:
        mark = "-" if t["met"] is None else "met" if t["met"] else "MISSED"
        value = "-" if t["value"] is None else t["value"]
        lines.append(f"  {t['what']:48} {t['target']:>8}  {value!s:>8}  {mark}")
    lines.append(f"\n{r['seconds']:.0f} s in all")
    return "\n".join(lines)


def _profile(p: dict[str, float]) -> str:
    return f"{p['mean_cos']:.2f}/{p['top1_cos']:.2f}/{p['top10_cos']:.2f}"
