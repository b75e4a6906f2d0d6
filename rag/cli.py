"""The `rag` command: the composition root that turns flags into settings."""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .errors import RagError
from .settings import EMBED_BACKENDS, REWRITES, Settings

F = Callable[..., Any]


def _settings_options(*names: str) -> Callable[[F], F]:
    """Add the shared setting flags a command needs; each overrides env and defaults."""
    options = {
        "index": click.option(
            "--index", type=click.Path(path_type=Path), help="Index folder [env RAG_INDEX; default ./index]."
        ),
        "collection": click.option(
            "--collection",
            metavar="NAME",
            help="Which collection under the index folder [env RAG_COLLECTION; default: default].",
        ),
        "store": click.option(
            "--store",
            type=click.Choice(["faiss", "qdrant"]),
            help="Where a new index goes [env RAG_STORE; default faiss; an existing index's own store "
            "is used without it].",
        ),
        "qdrant_url": click.option(
            "--qdrant-url",
            metavar="URL",
            help="With --store qdrant: a Qdrant server or cluster [env RAG_QDRANT_URL; default: local "
            "mode inside the index folder].",
        ),
        "embedder": click.option("--embedder", help="sentence-transformers name or path [env RAG_EMBEDDER]."),
        "embed_backend": click.option(
            "--embed-backend",
            type=click.Choice(EMBED_BACKENDS),
            help="What runs the embedder: in process, or an OpenAI-compatible /v1/embeddings "
            "endpoint (openai) [env RAG_EMBED_BACKEND].",
        ),
        "embed_base_url": click.option(
            "--embed-base-url",
            metavar="URL",
            help="With --embed-backend openai: the endpoint's API root, e.g. http://127.0.0.1:8080/v1 "
            "[env RAG_EMBED_BASE_URL].",
        ),
        "embed_model": click.option(
            "--embed-model",
            metavar="NAME",
            help="Model name on that endpoint [env RAG_EMBED_MODEL; default: the --embedder name].",
        ),
        "embed_api_key": click.option(
            "--embed-api-key", metavar="KEY", help="The endpoint's key; prefer the env var RAG_EMBED_API_KEY."
        ),
        "embed_timeout": click.option(
            "--embed-timeout",
            type=float,
            metavar="SECONDS",
            help="Wait this long for each batch of embeddings [env RAG_EMBED_TIMEOUT].",
        ),
        "model": click.option(
            "--model", help="GGUF path or bundled alias (smollm2, qwen2.5-0.5b) [env RAG_MODEL]."
        ),
        "top_k": click.option(
            "-k", "--top-k", "top_k", type=int, help="Passages per question [env RAG_TOP_K]."
        ),
        "n_ctx": click.option("--n-ctx", type=int, help="Model context window in tokens [env RAG_N_CTX]."),
        "threads": click.option("--threads", type=int, help="CPU threads for the model [env RAG_THREADS]."),
        "n_gpu_layers": click.option(
            "--gpu-layers", "n_gpu_layers", type=int, help="Layers offloaded to a GPU."
        ),
        "temperature": click.option(
            "--temperature", type=float, help="Sampling temperature (0: deterministic)."
        ),
        "max_tokens": click.option("--max-tokens", type=int, help="Answer length budget in tokens."),
        "max_file_mb": click.option("--max-file-mb", type=float, help="Refuse inputs larger than this."),
        "min_score": click.option(
            "--min-score",
            type=float,
            help="Refuse before the model when no passage's cosine reaches this [env RAG_MIN_SCORE].",
        ),
        "min_answerability": click.option(
            "--min-answerability",
            type=float,
            help="Refuse before the model below this answerability, 0-1 (default 0.3; 0: off) "
            "[env RAG_MIN_ANSWERABILITY].",
        ),
        "verify": click.option(
            "--verify/--no-verify",
            default=None,
            help="Check the answer against the passages and withdraw it when they do not support it "
            "(default on).",
        ),
        "min_support": click.option(
            "--min-support",
            type=float,
            help="Share of the answer's and the question's words a passage window must hold (default 0.35).",
        ),
        "context": click.option(
            "--context",
            type=click.Choice(["passages", "windows"]),
            help="What of each passage the model reads: whole passages or evidence windows.",
        ),
        "mmr": click.option("--mmr", type=float, help="MMR weight for diverse passages (1: off)."),
        "margin": click.option(
            "--margin",
            type=float,
            help="The model reads only passages whose cosine is within this of the best one's "
            "(0: every passage) [env RAG_MARGIN].",
        ),
        "today": click.option(
            "--today",
            metavar="DATE",
            help="Read the question's time against this date [env RAG_TODAY; default: the clock].",
        ),
        "read_time": click.option(
            "--time/--no-time",
            "read_time",
            default=None,
            help="Read time in questions: 'in 2024', 'last week' filter by date, 'latest' prefers newer "
            "articles (default on).",
        ),
        "rewrite": click.option(
            "--rewrite",
            type=click.Choice(REWRITES),
            help="How follow-ups are searched: the model's rewrite when still the same question "
            "(checked, default), the rewrite as it comes (model), or as asked (none).",
        ),
        "reranker": click.option(
            "--reranker", help="CrossEncoder name or path re-ranking the passages [env RAG_RERANKER]."
        ),
        "tasks": click.option(
            "--tasks/--no-tasks",
            default=None,
            help="Summarize whole articles when a question asks for it ('summarize the article about "
            "X', 'what do my articles say about Y'; default on).",
        ),
        "guard": click.option(
            "--guard/--no-guard",
            default=None,
            help="Withhold passage sentences that read as instructions to the model (default on).",
        ),
    }

    def deco(fn: F) -> F:
        for name in reversed(_with_companions(names)):
            fn = options[name](fn)
        return fn

    return deco


def _filter_options(fn: F) -> F:
    """--source/--author/--since/--until/--id: which articles may answer."""
    for option in reversed(
        (
            click.option(
                "--source", "f_source", multiple=True, help="Only articles from this source (repeatable)."
            ),
            click.option(
                "--author", "f_author", multiple=True, help="Only articles whose byline has this name."
            ),
            click.option(
                "--since", "f_since", metavar="DATE", help="Only articles dated on or after (YYYY-MM-DD)."
            ),
            click.option(
                "--until", "f_until", metavar="DATE", help="Only articles dated on or before (YYYY-MM-DD)."
            ),
            click.option(
                "--id", "f_ids", multiple=True, metavar="ID", help="Only this article (repeatable)."
            ),
        )
    ):
        fn = option(fn)
    return fn


def _filters(kw: dict[str, Any]) -> Any:
    from .filters import Filters

    return Filters(
        source=kw.pop("f_source"),
        author=kw.pop("f_author"),
        since=kw.pop("f_since") or "",
        until=kw.pop("f_until") or "",
        ids=kw.pop("f_ids"),
    )


def _handle_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RagError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


# Options that come with another wherever it is taken: the index folder with the collection
# in it, the embed backend with where the remote one is.
_COMPANIONS = {
    "index": ("collection", "store", "qdrant_url"),
    "embed_backend": ("embed_base_url", "embed_model", "embed_api_key", "embed_timeout"),
}


def _with_companions(names: tuple[str, ...]) -> tuple[str, ...]:
    extra = [c for n in names for c in _COMPANIONS.get(n, ()) if c not in names]
    return (*names, *dict.fromkeys(extra))


def _split(kwargs: dict[str, Any], *names: str) -> Settings:
    return Settings.load(**{n: kwargs.pop(n) for n in _with_companions(names) if n in kwargs})


BENCH_SECTIONS = ("ingest", "query", "startup", "scale", "web", "remote", "commit")

SETTING_NAMES = (
    "index",
    "embedder",
    "embed_backend",
    "model",
    "top_k",
    "n_ctx",
    "threads",
    "n_gpu_layers",
    "temperature",
    "max_tokens",
    "min_score",
    "min_answerability",
    "verify",
    "min_support",
    "mmr",
    "reranker",
    "guard",
    "context",
    "margin",
    "today",
    "read_time",
    "rewrite",
    "tasks",
    "max_file_mb",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rag-articles")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Chat with your articles, locally: index them, ask questions, get cited answers."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@_settings_options("index", "embedder", "embed_backend", "max_file_mb")
@click.option(
    "--field",
    "fields",
    multiple=True,
    metavar="NAME=COLUMN",
    help="Where a dump keeps a field, e.g. --field text=story (repeatable).",
)
@click.option("--rebuild", is_flag=True, help="Start a fresh index instead of adding to it.")
@click.option(
    "--prune", is_flag=True, help="Remove the articles whose files under the given folders are gone."
)
@_handle_errors
def ingest(paths: tuple[str, ...], fields: tuple[str, ...], rebuild: bool, prune: bool, **kw: Any) -> None:
    """Index files, folders, web pages and feeds: .txt .md .html .pdf, .json/.jsonl/.csv
    dumps, RSS/Atom feeds (.rss .atom .xml), and http(s) URLs of pages or feeds.

    Near-duplicates of indexed articles (the same story from another outlet) are stored as
    their copies, not indexed again. A feed ingested again adds only its new entries."""
    from .loaders import parse_field_overrides
    from .pipeline import RAG

    settings = _split(kw, *SETTING_NAMES)
    rag = RAG(settings)
    mapping = parse_field_overrides(fields)
    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=total, label="Embedding chunks", file=sys.stderr)
            bar.__enter__()
        bar.update(done - bar.pos)

    from .ingest import ingest as run_ingest

    report = run_ingest(
        paths,
        settings=settings,
        embedder=rag.embedder,
        fields=mapping,
        rebuild=rebuild,
        prune=prune,
        progress=progress,
        on_error=lambda e: click.echo(f"error: {e}", err=True),
    )
    if bar is not None:
        bar.__exit__(None, None, None)
        if not sys.stderr.isatty():
            click.echo(err=True)  # click ends the bar's line only on a terminal
    _print_changes(report)
    extra = "".join(
        f", {n} {what}"
        for n, what in ((len(report.copies), "copies"), (len(report.removed), "removed"))
        if n or (what == "removed" and prune)
    )
    click.echo(
        f"{len(report.added)} added, {len(report.updated)} updated, "
        f"{len(report.unchanged)} unchanged{extra}, {len(report.failed)} failed; "
        f"{report.chunks} chunks embedded in {report.seconds:.1f} s -> {settings.folder}"
    )
    if report.failed:
        sys.exit(1)


def _print_changes(report: Any) -> None:
    for aid, of in report.copies:
        click.echo(f"copy: {aid} (stored as a copy of {of})", err=True)
    for aid in report.removed:
        click.echo(f"removed: {aid}", err=True)
    for aid in report.promoted:
        click.echo(f"indexed in place of a removed copy's original: {aid}", err=True)


@cli.command()
@click.argument("targets", nargs=-1, required=True)
@_settings_options("index", "embedder", "embed_backend", "max_file_mb")
@click.option(
    "--every", default="15m", show_default=True, metavar="INTERVAL", help="Time between passes: 30s, 15m, 2h."
)
@click.option("--passes", type=int, help="Stop after this many passes [default: until Ctrl-C].")
@_handle_errors
def watch(targets: tuple[str, ...], every: str, passes: int | None, **kw: Any) -> None:
    """Keep the index in step with folders, feeds and pages: ingest them with --prune every
    INTERVAL, printing what changed."""
    from .pipeline import RAG
    from .watch import Watcher, describe, parse_interval

    settings = _split(kw, *SETTING_NAMES)
    interval = parse_interval(every)

    def report(r: Any) -> None:
        _print_changes(r)
        stamp = time.strftime("%H:%M:%S")
        click.echo(f"{stamp} pass {watcher.passes}: {describe(r) if r.changed else 'no change'}")

    watcher = Watcher(
        RAG(settings),
        list(targets),
        every=interval,
        on_pass=report,
        on_error=lambda e: click.echo(f"error: {e}", err=True),
    )
    try:
        watcher.run(passes=passes)
    except KeyboardInterrupt:
        click.echo("stopped", err=True)


@cli.command(name="list")
@_settings_options("index")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_handle_errors
def list_(as_json: bool, **kw: Any) -> None:
    """List the indexed articles with their chunk counts."""
    from .store import open_index

    settings = _split(kw, "index")
    snap = open_index(_folder(settings))
    for a in snap.articles():
        if as_json:
            click.echo(json.dumps(a.__dict__, ensure_ascii=False))
        else:
            title = a.title or "(untitled)"
            copies = f" (+{a.copies} copies)" if a.copies else ""
            click.echo(f"{a.id}\t{a.chunks} chunks\t{a.date or '-'}\t{title[:70]}{copies}")


@cli.command()
@click.argument("article_ids", nargs=-1, required=True)
@_settings_options("index", "embedder", "embed_backend")
@_handle_errors
def remove(article_ids: tuple[str, ...], **kw: Any) -> None:
    """Remove articles by id (as shown by `rag list`); a removed article's syndicated copy,
    if it has one, is indexed in its place."""
    from .pipeline import RAG

    settings = _split(kw, *SETTING_NAMES)
    missing = RAG(settings).remove(article_ids)
    for m in missing:
        click.echo(f"error: no article with id {m!r} in {settings.folder}; see `rag list`", err=True)
    click.echo(f"removed {len(article_ids) - len(missing)} article(s)")
    if missing:
        sys.exit(1)


@cli.command()
@_settings_options("index")
@click.option("--json", "as_json", is_flag=True)
@_handle_errors
def stats(as_json: bool, **kw: Any) -> None:
    """Show what the index holds and what built it."""
    from .store import open_index, wants_compaction

    settings = _split(kw, "index")
    snap = open_index(_folder(settings))
    info = snap.stats()
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            if key == "segments":
                sizes = ", ".join(f"{x['live']}/{x['chunks']} {x['index_type']}" for x in value)
                value = f"{len(value)} (live/stored chunks: {sizes})"
            click.echo(f"{key:12} {value}")
        if wants_compaction(snap):
            click.echo("hint: many segments or removed rows; `rag compact` folds them together")


@cli.command()
@_settings_options("index")
@click.option("--all", "everything", is_flag=True, help="Fold every segment into one, the largest too.")
@_handle_errors
def compact(everything: bool, **kw: Any) -> None:
    """Fold the index's segments together. A commit writes only what it adds, as a new
    segment, and folds small segments as they pile up; this folds the rest (every segment but
    the largest, which is kept unless a fifth of it was removed), so searches read fewer.
    A running `rag serve` switches to the result at its next question."""
    from .store import Snapshot, store_of
    from .store import compact as run_compact

    settings = _split(kw, "index")
    folder = _folder(settings)
    if store_of(folder) != "faiss":
        click.echo(f"{folder} is on Qdrant, which folds its own segments: nothing to do")
        return
    snap = Snapshot.open(folder, verify=False)
    before = len(snap.segments)
    snap.close()
    gen = run_compact(folder, everything=everything, ann_threshold=settings.ann_threshold)
    if gen is None:
        click.echo(f"{folder} has {before} segment(s) and nothing to fold")
        return
    after = Snapshot.open(folder, verify=False)
    click.echo(f"{folder}: {before} segment(s) folded into {len(after.segments)}, now serving {gen}")
    after.close()


@cli.command()
@_settings_options("index")
@click.option(
    "--to", "to", type=click.Choice(["faiss", "qdrant"]), required=True, help="The store to move to."
)
@_handle_errors
def migrate(to: str, **kw: Any) -> None:
    """Move the index to another store: `--to qdrant` (a Qdrant server with --qdrant-url, else
    local mode inside the index folder) or back `--to faiss`. Articles, chunks, vectors,
    copies and feed state go over as they are (nothing is embedded again); the index folder
    then records the new store, so later commands need no flag."""
    from .store import migrate as run_migrate

    settings = _split(kw, "index")
    folder = _folder(settings)
    with click.progressbar(length=1, label="Moving articles", file=sys.stderr) as bar:

        def moved(done: int, total: int) -> None:
            bar.length = total
            bar.update(done - bar.pos)

        gen = run_migrate(
            folder,
            to=to,
            qdrant_url=settings.qdrant_url,
            ann_threshold=settings.ann_threshold,
            progress=moved,
        )
    click.echo(f"{folder} is now on the {to} store ({gen})")


@cli.command()
@_settings_options("index")
@_handle_errors
def recover(**kw: Any) -> None:
    """Go back to the newest intact generation of a damaged index."""
    from .store import recover as run_recover
    from .store import store_of

    settings = _split(kw, "index")
    if store_of(_folder(settings)) != "faiss":
        raise click.UsageError(
            f"{settings.folder} is on Qdrant, which keeps its own storage and recovery; "
            "`rag recover` goes back to an earlier generation of the FAISS store"
        )
    gen = run_recover(_folder(settings))
    click.echo(f"{settings.folder} now serves {gen}")


def _print_outcome(answer: Any) -> None:
    """After the streamed text: a withdrawn answer is marked as such, and replaced; the
    question's time, as read, is said (`--no-time` ignores it)."""
    if answer.query_time is not None and answer.query_time.label():
        click.echo(f"(time: {answer.query_time.label()}; --no-time ignores it)")
    if answer.outcome == "unsupported":
        check = answer.support.partition(":")[2].strip()
        click.echo(f"(withdrawn: the passages do not support that answer, {check})")
        click.echo(answer.answer)
    elif not answer.found:
        click.echo("(the articles do not hold the answer)")


def _print_result(answer: Any, as_json: bool) -> None:
    """After the streamed text: the answer as JSON, or its outcome and sources."""
    assert answer is not None
    if as_json:
        click.echo(json.dumps(answer.to_dict(), ensure_ascii=False))
        return
    click.echo()
    _print_outcome(answer)
    _print_sources(answer)


def _print_sources(answer: Any) -> None:
    if not answer.sources:
        return
    click.echo("\nSources:")
    for s in answer.sources:
        mark = "*" if s.cited else " "
        where = s.url or s.source or s.article_id
        click.echo(
            f" {mark}[{s.n}] {s.title or '(untitled)'} {('(' + s.date + ')') if s.date else ''} - {where}"
        )
        for sentence in s.evidence:
            click.echo(f"      > {sentence}")
        for sentence in s.withheld:
            click.echo(f"      ! not shown to the model (reads as an instruction to it): {sentence}")
        if s.copies:
            outlets = ", ".join(c.source or c.url or c.article_id for c in s.copies)
            click.echo(f"      also published by {outlets}")


# What a running server answers with per question; any other setting given on the command
# line is the server's own, so the question is answered here instead.
FORWARDED = ("index", "top_k", "temperature", "max_tokens", "today", "read_time")


def _where_options(fn: F) -> F:
    """--server URL / --local: answer through a running `rag serve`, or here."""
    fn = click.option(
        "--local", is_flag=True, help="Answer in this process, even when a `rag serve` runs on the index."
    )(fn)
    return click.option(
        "--server",
        metavar="URL",
        help="Answer through the `rag serve` at URL (default: the one running on the index, if any).",
    )(fn)


def _pinned(kw: dict[str, Any]) -> list[str]:
    """The settings given on the command line that a server would not honour."""
    return [n for n in SETTING_NAMES if n not in FORWARDED and kw.get(n) is not None]


def _answerer(settings: Settings, *, pinned: list[str], server: str | None, local: bool) -> Any:
    """A `Remote` for a running server when one may answer, else a local `RAG`, its model
    file already being read ahead."""
    if not local and not (pinned and not server):
        from .client import Remote, find

        url = server or find(settings.index, api_key=settings.api_key)
        if url:
            logging.getLogger(__name__).info("answering through the server at %s", url)
            return Remote(url, api_key=settings.api_key, collection=settings.collection)
    from .pipeline import RAG

    rag = RAG(settings)
    rag.preload()
    return rag


def _forwarded(kw: dict[str, Any]) -> dict[str, Any]:
    """The per-question settings given on the command line, as `stream` takes them."""
    names = {
        "top_k": "k",
        "temperature": "temperature",
        "max_tokens": "max_tokens",
        "today": "today",
        "read_time": "read_time",
    }
    return {names[n]: kw[n] for n in names if kw.get(n) is not None}


@cli.command()
@click.argument("question")
@_settings_options(*SETTING_NAMES[:-1])
@_filter_options
@_where_options
@click.option("--json", "as_json", is_flag=True, help="Print Answer.to_dict() as one JSON object.")
@_handle_errors
def ask(question: str, as_json: bool, server: str | None, local: bool, **kw: Any) -> None:
    """Answer QUESTION from the articles, streaming, then list the sources."""
    filters = _filters(kw)
    per_question, pinned = _forwarded(kw), _pinned(kw)
    answerer = _answerer(_split(kw, *SETTING_NAMES), pinned=pinned, server=server, local=local)
    stream = answerer.stream(question, filters=filters, **per_question)
    for piece in stream:
        if not as_json:
            click.echo(piece, nl=False)
    _print_result(stream.answer, as_json)


@cli.command()
@click.argument("targets", nargs=-1, metavar="ID...|REQUEST")
@click.option("--focus", default="", help="Keep to what the article says about this.")
@_settings_options(*SETTING_NAMES[:-1])
@_filter_options
@_where_options
@click.option("--json", "as_json", is_flag=True, help="Print Answer.to_dict() as one JSON object.")
@_handle_errors
def summarize(
    targets: tuple[str, ...], focus: str, as_json: bool, server: str | None, local: bool, **kw: Any
) -> None:
    """Summarize whole articles, each point cited: the articles of the given ids (as `rag
    list` shows them), or those a request names ("what do my articles say about sanctions",
    "the article about the bridge vote"); with nothing given, the index's only article.
    Each section of an article is one point; points of long articles or several are combined."""
    from .store import open_index
    from .summary import progress_text

    filters = _filters(kw)
    pinned = _pinned(kw)
    settings = _split(kw, *SETTING_NAMES)
    try:
        snap: Any = open_index(settings.folder, verify=False)
    except RagError:
        snap = None
    ids = targets if len(targets) > 1 or (snap is not None and targets and snap.article(targets[0])) else ()
    if not targets and snap is not None:
        only = snap.articles()
        if len(only) != 1:
            snap.close()
            raise click.UsageError(
                f"the index holds {len(only)} articles: name one by id (`rag list`) or by what it is "
                'about, e.g. rag summarize "the article about rare earths"'
            )
        ids = (only[0].id,)
    if snap is not None:
        snap.close()
    answerer = _answerer(settings, pinned=pinned, server=server, local=local)
    stream = answerer.summarize("" if ids else " ".join(targets), ids=ids, focus=focus, filters=filters)
    if not as_json and stream.sources:
        titles = dict.fromkeys(x.title or x.article_id for x in stream.sources)
        click.echo(f"Summary of {'; '.join(titles)}:", err=True)
    for piece in stream:
        if not piece and stream.progress is not None:
            click.echo(f"({progress_text(*stream.progress)})", err=True)
        elif not as_json:
            click.echo(piece, nl=False)
    _print_result(stream.answer, as_json)


@cli.command()
@click.argument("targets", nargs=-1, metavar="ID...|REQUEST")
@_settings_options(*SETTING_NAMES[:-1])
@_filter_options
@_where_options
@click.option("--json", "as_json", is_flag=True, help="Print Answer.to_dict() as one JSON object.")
@_handle_errors
def compare(targets: tuple[str, ...], as_json: bool, server: str | None, local: bool, **kw: Any) -> None:
    """Compare how articles report the same thing: where they agree, where their figures,
    names or claims differ, what one alone reports, each point cited. The articles of 2 to
    5 ids (as `rag list` shows them), or those a request names ("how did outlets report the
    strike", "the Northvale budget"); with nothing given, all of the index's 2 to 5."""
    from .store import open_index
    from .summary import MAX_ARTICLES

    filters = _filters(kw)
    pinned = _pinned(kw)
    settings = _split(kw, *SETTING_NAMES)
    try:
        snap: Any = open_index(settings.folder, verify=False)
    except RagError:
        snap = None
    ids: tuple[str, ...] = ()
    if snap is not None:
        if targets and all(snap.article(t) is not None for t in targets):
            ids = targets
        elif not targets:
            every = snap.articles()
            if not 2 <= len(every) <= MAX_ARTICLES:
                snap.close()
                raise click.UsageError(
                    f"the index holds {len(every)} articles: name 2 to {MAX_ARTICLES} by id (`rag list`) or "
                    'say what they report, e.g. rag compare "how did outlets report the strike"'
                )
            ids = tuple(a.id for a in every)
        snap.close()
    answerer = _answerer(settings, pinned=pinned, server=server, local=local)
    stream = answerer.compare("" if ids else " ".join(targets), ids=ids, filters=filters)
    for piece in stream:
        if not as_json:
            click.echo(piece, nl=False)
    _print_result(stream.answer, as_json)


@cli.command()
@_settings_options(*SETTING_NAMES[:-1])
@_filter_options
@_where_options
@click.option("--chat", "chat_id", metavar="ID", help="Go on with this saved chat (see `rag chats list`).")
@_handle_errors
def chat(server: str | None, local: bool, chat_id: str | None, **kw: Any) -> None:
    """A conversation in the terminal, saved; follow-ups use the earlier turns. Ctrl-D ends it."""
    from .errors import QuestionError

    filters = _filters(kw)
    per_question, pinned = _forwarded(kw), _pinned(kw)
    session = _answerer(_split(kw, *SETTING_NAMES), pinned=pinned, server=server, local=local).chat(chat_id)
    turns = len(session.history) // 2
    click.echo(
        "Ask about your articles. Ctrl-D or an empty line + 'exit' ends the chat.\n"
        + (
            f"(going on with saved chat {session.id}: {turns} turns so far)"
            if turns
            else f"(saved as chat {session.id})"
        )
    )
    while True:
        try:
            question = input("\n> ")
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return
        if question.strip().lower() in ("exit", "quit"):
            return
        try:
            stream = session.stream(question, filters=filters, **per_question)
        except QuestionError as e:
            click.echo(f"error: {e}", err=True)
            continue
        shown = stream.query != stream.question
        if shown:
            click.echo(f"(searching for: {stream.query})")
        for piece in stream:
            click.echo(piece, nl=False)
        click.echo()
        if not shown and stream.query != stream.question:
            # A server says what it searched for with the end of the answer.
            click.echo(f"(searched for: {stream.query})")
        _print_outcome(stream.answer)
        _print_sources(stream.answer)


@cli.command()
@_settings_options(*SETTING_NAMES)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=7860, show_default=True, type=int)
@click.option(
    "--auth",
    metavar="USER:PASSWORD",
    multiple=True,
    help="Require this login for the chat UI and the API (HTTP Basic on /v1, /health, /openapi.json); "
    "repeat it for several users, each with their own saved chats.",
)
@click.option(
    "--api-key",
    metavar="KEY",
    help="Require `Authorization: Bearer KEY` on the API (all but /health) [env RAG_API_KEY].",
)
@click.option("--no-ui", is_flag=True, help="Serve the API alone, without the chat UI.")
@click.option(
    "--watch",
    "watched",
    multiple=True,
    metavar="PATH|URL",
    help="Keep these folders, feeds or pages in the index, as `rag watch` does (repeatable).",
)
@click.option(
    "--every", default="15m", show_default=True, metavar="INTERVAL", help="Time between watch passes."
)
@click.option(
    "--backend",
    type=click.Choice(["llama-cpp", "openai"]),
    help="Who generates: the GGUF in process, or an OpenAI-compatible server [env RAG_BACKEND].",
)
@click.option(
    "--llm-base-url",
    metavar="URL",
    help="That server's API root, e.g. http://127.0.0.1:8080/v1 [env RAG_LLM_BASE_URL].",
)
@click.option("--llm-model", metavar="NAME", help="Model name on that server [env RAG_LLM_MODEL].")
@click.option("--llm-api-key", metavar="KEY", help="That server's key; prefer the env var RAG_LLM_API_KEY.")
@click.option(
    "--llm-timeout",
    type=float,
    metavar="SECONDS",
    help="Wait this long for that server [env RAG_LLM_TIMEOUT].",
)
@_handle_errors
def serve(
    host: str, port: int, auth: tuple[str, ...], no_ui: bool, watched: tuple[str, ...], every: str, **kw: Any
) -> None:
    """Serve the chat UI and the HTTP API (/v1, OpenAI-compatible) on http://HOST:PORT:
    one process, one model, one queue."""
    from ui.serving import serve as run_server

    from .watch import parse_interval

    interval = parse_interval(every)
    remote = ("backend", "llm_base_url", "llm_model", "llm_api_key", "llm_timeout", "api_key")
    settings = _split(kw, *SETTING_NAMES, *remote)
    credentials: list[tuple[str, str]] | None = None
    for login in auth:
        user, sep, password = login.partition(":")
        if not sep or not user or not password:
            raise click.BadParameter("must look like USER:PASSWORD", param_hint="--auth")
        if any(user == u for u, _ in credentials or ()):
            raise click.BadParameter(f"the user {user!r} is given twice", param_hint="--auth")
        credentials = [*(credentials or []), (user, password)]
    loopback = host in ("127.0.0.1", "localhost", "::1")
    if not loopback and credentials is None and not no_ui:
        click.echo(
            f"warning: serving on {host} without --auth: anyone who can reach this address "
            "can read and change your articles",
            err=True,
        )
    elif not loopback and credentials is None and not settings.api_key:
        click.echo(
            f"warning: serving the API on {host} without --api-key or --auth: anyone who can "
            "reach it can query your articles",
            err=True,
        )
    where = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    click.echo(
        ("" if no_ui else f"Chat: {where}/  ") + f"API: {where}/v1 (OpenAPI: {where}/openapi.json)",
        err=True,
    )
    run_server(
        settings, host=host, port=port, auth=credentials, ui=not no_ui, watch=list(watched), every=interval
    )


@cli.group()
def chats() -> None:
    """Saved chats: list, show, export, rename, delete (the index folder's chats.sqlite)."""


def _chat_options(fn: F) -> F:
    fn = click.option(
        "--user", default="", help="Whose chats (the login name under `rag serve --auth`; default: yours)."
    )(fn)
    return _settings_options("index")(fn)


def _chats_of(kw: dict[str, Any]) -> Any:
    from .chats import Chats

    return Chats(_folder(_split(kw, "index")))


def _folder(settings: Settings) -> Path:
    """The chosen collection's folder; raises when there is no such collection."""
    from . import collections

    if not collections.exists(settings.index, settings.collection):
        raise collections.missing(settings.index, settings.collection)
    return settings.folder


@chats.command(name="list")
@_chat_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per chat.")
@_handle_errors
def chats_list(user: str, as_json: bool, **kw: Any) -> None:
    """The saved chats, the most recently continued first."""
    found = _chats_of(kw).list(user=user)
    for c in found:
        d = c.to_dict()
        if as_json:
            click.echo(json.dumps({k: v for k, v in d.items() if k != "turns"}, ensure_ascii=False))
        else:
            click.echo(f"{c.id}  {d['updated'][:16].replace('T', ' ')}  {c.count:3} turns  {c.title}")
    if not found and not as_json:
        click.echo("No saved chats yet: `rag chat` starts one.", err=True)


@chats.command(name="show")
@click.argument("chat_id", metavar="ID")
@_chat_options
@_handle_errors
def chats_show(chat_id: str, user: str, **kw: Any) -> None:
    """A saved chat's questions and answers, with their sources."""
    from .chats import markdown

    click.echo(markdown(_chats_of(kw).get(chat_id, user=user)), nl=False)


@chats.command(name="export")
@click.argument("chat_id", metavar="ID")
@_chat_options
@click.option(
    "--format", "fmt", type=click.Choice(["markdown", "json"]), default="markdown", show_default=True
)
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not to stdout."
)
@_handle_errors
def chats_export(chat_id: str, user: str, fmt: str, out: Path | None, **kw: Any) -> None:
    """A saved chat as Markdown (answers with numbered citations and a sources list) or JSON."""
    from .chats import markdown

    chat = _chats_of(kw).get(chat_id, user=user)
    text = (
        markdown(chat)
        if fmt == "markdown"
        else json.dumps(chat.to_dict(), indent=1, ensure_ascii=False) + "\n"
    )
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"chat {chat.id} written to {out}", err=True)


@chats.command(name="rename")
@click.argument("chat_id", metavar="ID")
@click.argument("title")
@_chat_options
@_handle_errors
def chats_rename(chat_id: str, title: str, user: str, **kw: Any) -> None:
    """Give a saved chat another title."""
    chat = _chats_of(kw).rename(chat_id, title, user=user)
    click.echo(f"{chat.id}  {chat.title}")


@chats.command(name="delete")
@click.argument("chat_ids", metavar="ID...", nargs=-1, required=True)
@_chat_options
@_handle_errors
def chats_delete(chat_ids: tuple[str, ...], user: str, **kw: Any) -> None:
    """Delete saved chats."""
    store = _chats_of(kw)
    for chat_id in chat_ids:
        store.delete(chat_id, user=user)
        click.echo(f"deleted chat {chat_id}", err=True)


@cli.group()
def collections() -> None:
    """Named indexes under one index folder, each with its own articles and chats: list,
    create, delete. Pick one for any command with `--collection NAME` or RAG_COLLECTION."""


@collections.command(name="list")
@click.option(
    "--index", type=click.Path(path_type=Path), help="Index folder [env RAG_INDEX; default ./index]."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per collection.")
@_handle_errors
def collections_list(index: Path | None, as_json: bool) -> None:
    """The collections with their article and chunk counts; * marks the one in use."""
    from . import collections as K

    settings = Settings.load(index=index)
    for c in K.info(settings.index):
        if as_json:
            click.echo(json.dumps(c.to_dict(), ensure_ascii=False))
        else:
            mark = "*" if c.name == settings.collection else " "
            click.echo(f"{mark} {c.name:20} {c.articles:6} articles {c.chunks:8} chunks  {c.path}")


@collections.command(name="create")
@click.argument("name")
@click.option(
    "--index", type=click.Path(path_type=Path), help="Index folder [env RAG_INDEX; default ./index]."
)
@_handle_errors
def collections_create(name: str, index: Path | None) -> None:
    """Make an empty collection NAME; fill it with `rag ingest --collection NAME PATH...`."""
    from . import collections as K

    path = K.create(Settings.load(index=index).index, name)
    click.echo(f"created collection {name} at {path}; fill it with `rag ingest --collection {name} PATH...`")


@collections.command(name="delete")
@click.argument("name")
@click.option(
    "--index", type=click.Path(path_type=Path), help="Index folder [env RAG_INDEX; default ./index]."
)
@click.option("--yes", is_flag=True, help="Do not ask first.")
@_handle_errors
def collections_delete(name: str, index: Path | None, yes: bool) -> None:
    """Delete collection NAME with its articles and saved chats."""
    from . import collections as K

    root = Settings.load(index=index).index
    if not K.exists(root, K.check_name(name)):
        raise K.missing(root, name)
    if not yes:
        click.confirm(f"Delete collection {name!r} with its articles and chats?", abort=True)
    K.delete(root, name)
    click.echo(f"deleted collection {name}")


@cli.command(name="eval")
@click.option("--articles", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--qa", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
# Its own -k (an eval setting, not the index's default), and no GPU or file-size flags.
@_settings_options(*(n for n in SETTING_NAMES if n not in ("top_k", "n_gpu_layers", "max_file_mb")))
@click.option("-k", "k", type=int, default=5, show_default=True, help="Passages per question.")
@click.option("--limit", type=int, help="Evaluate a random sample of N questions.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of that sample.")
@click.option("--retrieval-only", is_flag=True, help="Skip generation: recall and MRR in seconds.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report here.")
@click.option(
    "--gate-plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Plot what min_answerability thresholds would refuse (needs matplotlib).",
)
@_handle_errors
def eval_(
    articles: Path,
    qa: Path,
    k: int,
    limit: int | None,
    seed: int,
    retrieval_only: bool,
    out: Path | None,
    gate_plot: Path | None,
    **kw: Any,
) -> None:
    """Score answers on a question set (articles.jsonl + qa.jsonl, see shared/README.md)."""
    from .evaluate import GATE_THRESHOLDS, evaluate, gate_tradeoff, load_questions, plot_tradeoff
    from .pipeline import RAG

    if kw.get("index") is None:
        kw["index"] = Path("index") / f"eval-{articles.resolve().parent.name}"
    settings = _split(kw, *SETTING_NAMES)
    questions = load_questions(qa, limit=limit, seed=seed)
    rag = RAG(settings)
    report = rag.ingest([articles])
    for path, reason in report.failed:
        click.echo(f"error: {path}: {reason}", err=True)
    with click.progressbar(length=len(questions), label="Questions", file=sys.stderr) as bar:
        result = evaluate(
            rag,
            questions,
            k=k,
            retrieval_only=retrieval_only,
            progress=lambda done, total: bar.update(done - bar.pos),
            today=settings.today or None,
        )
    result["settings"].update(
        articles=str(articles),
        qa=str(qa),
        model=settings.model,
        embedder=settings.embedder,
        index=str(settings.index),
    )
    for key, value in result["metrics"].items():
        click.echo(f"{key:30} {'-' if value is None else value}")
    for kind, figures in result["by_kind"].items():
        click.echo(f"{'kind ' + kind:30} " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    if result["settings"]["unanswerable"] and result["settings"]["answerable"]:
        rows = gate_tradeoff(result["records"], GATE_THRESHOLDS)
        result["gate"] = rows
        click.echo("\nmin_answerability  refusal_accuracy  false_refusal_rate")
        for row in rows:
            t, right, wrong = row["threshold"], row["refusal_accuracy"], row["false_refusal_rate"]
            click.echo(f"{t:17.2f}  {right:16.3f}  {wrong:18.3f}")
        if gate_plot is not None:
            plot_tradeoff({qa.parent.name: rows}, gate_plot)
            click.echo(f"plot written to {gate_plot}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
        click.echo(f"report written to {out}")


@cli.command()
@click.option("--assemble", is_flag=True, help="Assemble and verify the bundled models; export the embedder.")
@_handle_errors
def models(assemble: bool) -> None:
    """List the bundled GGUF models (assembling chunked ones with --assemble)."""
    from .models import BUNDLED, bundled_path

    for alias, spec in BUNDLED.items():
        try:
            path = str(bundled_path(alias)) if assemble else spec.filename
        except RagError as e:
            path = f"unavailable: {e}"
        click.echo(f"{alias:14} {path}\n{'':14} {spec.origin}")
    if assemble:
        from .embedding import BUNDLED_EMBEDDER, Embedder

        # Exported once here, so that no later start pays for it.
        try:
            Embedder(BUNDLED_EMBEDDER, backend="openvino")
            status = "exported"
        except RagError as e:
            status = f"unavailable: {e}"
        click.echo(f"{'embedder':14} {BUNDLED_EMBEDDER} on OpenVINO: {status}")


@cli.command()
@_settings_options("embedder", "embed_backend", "model", "top_k", "n_ctx", "threads", "max_tokens")
@click.option("--quick", is_flag=True, help="Tiny sizes, no 1M point: under a minute (for tests).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON result here.")
@click.option(
    "--articles",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JSONL dump to ingest instead of the sample copies + generated articles.",
)
@click.option("--chunks", type=int, help="Chunks of generated articles [default 2000; quick 100].")
@click.option(
    "--questions",
    "questions_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Questions to time, one per line (or qa.jsonl) [default: a built-in set].",
)
@click.option(
    "--sizes", help="Vector counts of the scale and commit sections, e.g. 10000,100000 [default 10k,100k,1M]."
)
@click.option("--repeat", type=int, default=1, show_default=True, help="Ingest / encode-alone pairs (ABBA).")
@click.option("--batch-size", type=int, help="Texts per embedding batch [default 32].")
@click.option("--ann-threshold", type=int, help="Vectors from which the store uses IVF [default 20000].")
@click.option(
    "--only",
    type=click.Choice(list(BENCH_SECTIONS)),
    multiple=True,
    help="Run only these sections (repeatable; --quick leaves out remote unless named).",
)
@_handle_errors
def bench(
    quick: bool,
    out: Path | None,
    articles: Path | None,
    chunks: int | None,
    questions_file: Path | None,
    sizes: str | None,
    repeat: int,
    batch_size: int | None,
    ann_threshold: int | None,
    only: tuple[str, ...],
    **kw: Any,
) -> None:
    """Time ingest, answers and search at scale, each next to its raw component (encoding
    alone, llama.cpp alone, FAISS alone) measured in the same run; print a table."""
    from .bench import BenchOptions, format_report, run_bench

    settings = _split(kw, *SETTING_NAMES).with_(batch_size=batch_size, ann_threshold=ann_threshold)
    questions: tuple[str, ...] | None = None
    if questions_file is not None:
        lines = [ln.strip() for ln in questions_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        questions = tuple(json.loads(ln)["question"] if ln.startswith("{") else ln for ln in lines)
    try:
        size_list = tuple(int(x.replace("_", "")) for x in sizes.split(",")) if sizes else None
    except ValueError:
        raise click.BadParameter(
            f"must be integers separated by commas, got {sizes!r}", param_hint="--sizes"
        ) from None
    options = BenchOptions(
        quick=quick,
        articles=articles,
        chunks=chunks,
        questions=questions,
        sizes=size_list,
        commit_sizes=size_list,
        repeat=repeat,
        # The remote section starts a second server: too slow for --quick unless asked for.
        sections=only or tuple(x for x in BENCH_SECTIONS if not (quick and x == "remote")),
    )
    bars: dict[str, Any] = {}

    def progress(label: str, done: int, total: int) -> None:
        if label not in bars:
            for old in bars.values():
                old.__exit__(None, None, None)
                if not sys.stderr.isatty():
                    click.echo(err=True)
            bars.clear()
            bars[label] = click.progressbar(length=max(total, 1), label=label.ljust(26), file=sys.stderr)
            bars[label].__enter__()
        bar = bars[label]
        bar.update(max(0, done - bar.pos))

    try:
        result = run_bench(settings, options, progress=progress)
    finally:
        for bar in bars.values():
            bar.__exit__(None, None, None)
            if not sys.stderr.isatty():
                click.echo(err=True)
    click.echo(format_report(result))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
        click.echo(f"JSON written to {out}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
