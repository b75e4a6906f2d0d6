"""Keeping an index in step with folders and feeds: the same ingest, repeated.

Each pass is `RAG.ingest(targets, prune=True)`: new and changed files and new feed entries
go in, articles whose files are gone come out, in one commit (none when nothing changed).
Readers pick the new generation up at their next question, so a running chat sees the
change without a restart.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .errors import ConfigError, InputError, RagError
from .types import IngestReport

if TYPE_CHECKING:
    from .pipeline import RAG

log = logging.getLogger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_interval(text: str) -> float:
    """Seconds in `15m`, `30s`, `2h`, `1d` or a bare number of seconds."""
    m = _INTERVAL.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"interval {text!r} is not a positive duration; write e.g. 30s, 15m, 2h or 1d")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def describe(report: IngestReport) -> str:
    """One line of what a pass changed."""
    parts = [
        f"{len(report.added)} added",
        f"{len(report.updated)} updated",
        f"{len(report.removed)} removed",
    ]
    if report.copies:
        parts.append(f"{len(report.copies)} stored as copies")
    if report.promoted:
        parts.append(f"{len(report.promoted)} copies indexed in place of removed articles")
    if report.failed:
        parts.append(f"{len(report.failed)} failed")
    return ", ".join(parts)


class Watcher:
    """Ingests `targets` (folders, files, page and feed URLs) every `every` seconds."""

    def __init__(
        self,
        rag: RAG,
        targets: Sequence[str],
        *,
        every: float = 900.0,
        on_pass: Callable[[IngestReport], None] | None = None,
        on_error: Callable[[InputError], None] | None = None,
    ) -> None:
        if not targets:
            raise ConfigError("nothing to watch: give one or more folders, files or URLs")
        if every <= 0:
            raise ConfigError(f"the watch interval must be positive, got {every!r} s")
        self.rag = rag
        self.targets = list(targets)
        self.every = every
        self.on_pass = on_pass
        self.on_error = on_error
        self.passes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_pass(self) -> IngestReport:
        report = self.rag.ingest(self.targets, prune=True, on_error=self.on_error)
        self.passes += 1
        if report.changed:
            log.warning("watch pass %d: %s", self.passes, describe(report))
        else:
            log.info("watch pass %d: nothing changed", self.passes)
        for path, reason in report.failed:
            log.warning("watch: %s: %s", path, reason)
        if report.changed:
            self._compact_if_wanted()
        if self.on_pass is not None:
            self.on_pass(report)
        return report

    def _compact_if_wanted(self) -> None:
        # Passes add small segments; between passes is when folding them costs nobody a wait.
        from .store import wants_compaction

        snap = self.rag.snapshot()
        if snap is not None and wants_compaction(snap):
            gen = self.rag.compact()
            log.warning("watch pass %d: segments folded together (%s)", self.passes, gen)

    def run(self, passes: int | None = None) -> None:
        """Pass after pass until `stop()` (or `passes` passes); a pass that fails as a whole
        (the index locked by a long writer, say) is logged and tried again next time."""
        while not self._stop.is_set():
            try:
                self.run_pass()
            except RagError as e:
                self.passes += 1
                log.error("watch pass %d failed: %s", self.passes, e)
            if passes is not None and self.passes >= passes:
                return
            # From the end of one pass to the start of the next: a slow pass never runs into the next.
            self._stop.wait(self.every)

    def start(self) -> Watcher:
        """Run in a background thread (daemon: it never holds a server open)."""
        self._thread = threading.Thread(target=self.run, name="rag-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
