"""The corpus the INGEST and QUERY sections work on: copies of the bundled sample article, then
generated news articles until the chunk count is reached, written as JSONL for `rag ingest`.
The WEB section serves the same generated articles as HTML pages."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..settings import Settings
from ..types import Article

# rag/bench/corpus.py: the samples folder is beside the rag package.
SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "russia-us-rare-earths.txt"

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
    from ..ingest import chunk_article
    from ..loaders import load_file

    out: list[Article] = []
    if copies:
        if not SAMPLE.exists():
            from ..errors import ConfigError

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
