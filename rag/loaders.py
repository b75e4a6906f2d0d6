"""Files and article dumps to `Article` records.

`iter_articles` yields an `Article` for every readable article and an `InputError`
for every unreadable file or record, so one bad input never stops a batch.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError
from .types import Article

log = logging.getLogger(__name__)

TEXT_EXTS = {".txt", ".md", ".markdown", ".text"}
HTML_EXTS = {".html", ".htm", ".xhtml"}
PDF_EXTS = {".pdf"}
DUMP_EXTS = {".json", ".jsonl", ".ndjson", ".csv"}
# RSS/Atom files: read by `rag.feeds`, which `rag.ingest` hands them to.
FEED_EXTS = {".rss", ".atom", ".xml"}
SUPPORTED_EXTS = TEXT_EXTS | HTML_EXTS | PDF_EXTS | DUMP_EXTS | FEED_EXTS

# Common names under which scrapers and exporters put each field, in order of preference.
FIELD_NAMES: dict[str, tuple[str, ...]] = {
    "text": ("text", "content", "body", "article", "full_text", "maintext", "description"),
    "title": ("title", "headline", "name"),
    "date": ("date", "published", "published_at", "publish_date", "pubdate", "created_at"),
    "url": ("url", "link", "href", "source_url"),
    "author": ("author", "byline", "authors", "creator"),
    "source": ("source", "publisher", "site", "sitename", "domain"),
    "id": ("id", "_id", "uid", "guid", "doc_id", "article_id"),
}


def parse_field_overrides(pairs: Iterable[str]) -> dict[str, str]:
    """Parse `--field NAME=COLUMN` values into a mapping."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not column or name not in FIELD_NAMES:
            raise ConfigError(
                f"--field {pair!r} must look like NAME=COLUMN with NAME one of {', '.join(FIELD_NAMES)}"
            )
        out[name] = column
    return out


def discover(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path | InputError]:
    """Expand folders recursively into supported files; missing paths become errors."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = False
            for sub in sorted(p.rglob("*")):
                if sub.is_file() and sub.suffix.lower() in SUPPORTED_EXTS and not _hidden(sub, p):
                    found = True
                    yield sub
            if not found:
                yield InputError(str(p), "folder holds no supported file (" + _exts() + ")")
        elif p.is_file():
            if p.suffix.lower() in SUPPORTED_EXTS:
                yield p
            else:
                yield InputError(
                    str(p), f"unsupported file type {p.suffix or '(none)'!r}; use one of {_exts()}"
                )
        else:
            yield InputError(str(p), "no such file or folder")


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _exts() -> str:
    return " ".join(sorted(SUPPORTED_EXTS))


def iter_articles(
    paths: Iterable[str | os.PathLike[str]],
    *,
    max_file_mb: float = 50.0,
    fields: Mapping[str, str] | None = None,
) -> Iterator[Article | InputError]:
    """Yield the articles of files and folders, and an `InputError` for each bad input."""
    for item in discover(paths):
        if isinstance(item, InputError):
            yield item
            continue
        try:
            yield from load_file(item, max_file_mb=max_file_mb, fields=fields)
        except InputError as e:
            yield e


def load_file(
    path: Path, *, max_file_mb: float = 50.0, fields: Mapping[str, str] | None = None
) -> Iterator[Article | InputError]:
    """Articles of one file; raises `InputError` when the whole file is unusable."""
    name = str(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InputError(name, f"cannot read: {e.strerror}") from None
    if size == 0:
        raise InputError(name, "empty file")
    if size > max_file_mb * 1024 * 1024:
        raise InputError(
            name,
            f"{size / 1024 / 1024:.1f} MB is over the size limit of {max_file_mb:g} MB; "
            "split it or raise max_file_mb",
        )
    ext = path.suffix.lower()
    if ext in PDF_EXTS:
        yield _load_pdf(path)
    elif ext in HTML_EXTS:
        yield _load_html(path)
    elif ext in (".jsonl", ".ndjson"):
        yield from _load_jsonl(path, fields or {})
    elif ext == ".json":
        yield from _load_json(path, fields or {})
    elif ext == ".csv":
        yield from _load_csv(path, fields or {})
    else:
        yield _load_text(path)


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise InputError(str(path), "binary data, not text; give a text, HTML, PDF or dump file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(
            str(path),
            f"not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); convert it to UTF-8",
        ) from None
    return text


def clean_text(text: str) -> str:
    # Offsets are into the stored text, so normalisation happens once, here.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(ch for ch in text if ch in "\n\t" or (ch >= " " and ch != "\x7f")).strip()


def _require_text(name: str, text: str) -> str:
    text = clean_text(text)
    if not text:
        raise InputError(name, "no text found in it")
    return text


def _load_text(path: Path) -> Article:
    text = _require_text(str(path), _read_text(path))
    title = ""
    first = text.split("\n", 1)[0].strip()
    if path.suffix.lower() in (".md", ".markdown") and first.startswith("#"):
        title = first.lstrip("#").strip()
    return Article(id=str(path.resolve()), text=text, title=title or path.stem, path=str(path))


def _load_html(path: Path) -> Article:
    import trafilatura

    html = _read_text(path)
    doc = trafilatura.bare_extraction(html, with_metadata=True, include_comments=False)
    text = clean_text(doc.text or "") if doc is not None else ""
    if not text:
        raise InputError(str(path), "HTML holds no article text (only markup or scripts)")
    url = (doc.url or "") if doc is not None else ""
    return Article(
        id=url or str(path.resolve()),
        text=text,
        title=doc.title or path.stem,
        date=doc.date or "",
        url=url,
        author=doc.author or "",
        source=doc.sitename or doc.hostname or "",
        path=str(path),
    )


def _load_pdf(path: Path) -> Article:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    name = str(path)
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            raise InputError(name, "PDF is encrypted; decrypt it first (e.g. qpdf --decrypt)")
        pages = [page.extract_text() or "" for page in reader.pages]
        meta = reader.metadata
    except InputError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as e:
        raise InputError(name, f"broken PDF ({type(e).__name__}: {e}); re-export it") from None
    text = clean_text("\n\n".join(p.strip() for p in pages if p.strip()))
    if not text:
        raise InputError(name, "PDF has no extractable text (scanned images?); OCR it first")
    title = (meta.title if meta and meta.title else "") or path.stem
    author = meta.author if meta and meta.author else ""
    date = ""
    if meta is not None:
        try:
            created = meta.creation_date
            date = created.date().isoformat() if created else ""
        except (ValueError, TypeError):
            date = ""
    return Article(
        id=str(path.resolve()), text=text, title=str(title), author=str(author), date=date, path=name
    )


def _pick(record: Mapping[str, Any], name: str, fields: Mapping[str, str]) -> str:
    keys = (fields[name],) if name in fields else FIELD_NAMES[name]
    lowered = {str(k).lower(): v for k, v in record.items()}
    for key in keys:
        value = record.get(key, lowered.get(key.lower()))
        if value is None or value == "":
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value if v)
        elif isinstance(value, dict):
            value = value.get("name") or value.get("title") or ""
        return str(value).strip()
    return ""


def record_to_article(
    record: Mapping[str, Any], *, where: str, path: Path, fields: Mapping[str, str]
) -> Article:
    """One dump record to an article; `where` names it in errors (file:line)."""
    if not isinstance(record, Mapping):
        raise InputError(where, f"record is a {type(record).__name__}, not an object")
    text = clean_text(_pick(record, "text", fields))
    if not text:
        wanted = fields.get("text") or "/".join(FIELD_NAMES["text"][:3])
        raise InputError(where, f"record has no text under {wanted}; use --field text=COLUMN")
    given_id = _pick(record, "id", fields)
    url = _pick(record, "url", fields)
    return Article(
        id=given_id or url or where,
        text=text,
        title=_pick(record, "title", fields),
        date=_pick(record, "date", fields),
        url=url,
        author=_pick(record, "author", fields),
        source=_pick(record, "source", fields),
        path=str(path),
    )


def _load_jsonl(path: Path, fields: Mapping[str, str]) -> Iterator[Article | InputError]:
    name = str(path)
    try:
        f = open(path, encoding="utf-8-sig")  # noqa: SIM115 - streamed line by line
    except OSError as e:
        raise InputError(name, f"cannot read: {e.strerror}") from None
    good = 0
    with f:
        lineno = 0
        while True:
            lineno += 1
            try:
                line = f.readline()
            except UnicodeDecodeError as e:
                raise InputError(f"{name}:{lineno}", f"not valid UTF-8 ({e.reason})") from None
            if not line:
                break
            if not line.strip():
                continue
            where = f"{name}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield InputError(where, f"malformed JSON ({e.msg}); fix or delete that line")
                continue
            try:
                yield record_to_article(record, where=where, path=path, fields=fields)
                good += 1
            except InputError as e:
                yield e
    if good == 0 and lineno <= 1:
        raise InputError(name, "no records in it")


def _load_json(path: Path, fields: Mapping[str, str]) -> Iterator[Article | InputError]:
    name = str(path)
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise InputError(name, f"malformed JSON at line {e.lineno} ({e.msg})") from None
    if isinstance(data, dict):
        # Dumps often wrap their list: {"articles": [...]} or {"data": [...]}.
        lists = [v for v in data.values() if isinstance(v, list) and v and isinstance(v[0], dict)]
        records = lists[0] if lists and not _pick(data, "text", fields) else [data]
    elif isinstance(data, list):
        records = data
    else:
        raise InputError(name, "JSON holds neither an object nor a list of objects")
    if not records:
        raise InputError(name, "no records in it")
    for i, record in enumerate(records):
        try:
            yield record_to_article(record, where=f"{name}#{i}", path=path, fields=fields)
        except InputError as e:
            yield e


def _load_csv(path: Path, fields: Mapping[str, str]) -> Iterator[Article | InputError]:
    name = str(path)
    text = _read_text(path)
    csv.field_size_limit(2**31 - 1)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    lowered = {h.lower() for h in header if h}
    wanted = (fields["text"],) if "text" in fields else FIELD_NAMES["text"]
    if not any(w.lower() in lowered for w in wanted):
        raise InputError(
            name,
            f"CSV has no text column (looked for {', '.join(wanted)}; it has "
            f"{', '.join(header) or 'no header'}); use --field text=COLUMN",
        )
    try:
        for i, row in enumerate(reader, start=2):
            try:
                yield record_to_article(row, where=f"{name}:{i}", path=path, fields=fields)
            except InputError as e:
                yield e
    except csv.Error as e:
        raise InputError(name, f"malformed CSV ({e})") from None
