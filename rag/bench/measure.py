"""The bench's measuring tools, shared by its sections: percentiles and ratios as the report
gives them, the process's RSS and peak RSS (Linux /proc), the time spent inside an embedder's or
any object's methods, and `Progress`, the callback every section reports through."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

Progress = Callable[[str, int, int], None]
"""progress(label, done, total): a new label starts a new phase."""


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 1]; 0.0 for no values."""
    if not values:
        return 0.0
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def p50_p95(values: Sequence[float], digits: int = 2) -> dict[str, float]:
    """The median and the 95th percentile, as every latency of the report is given."""
    return {"p50": round(percentile(values, 0.5), digits), "p95": round(percentile(values, 0.95), digits)}


def ratio_of(a: float | None, b: float | None) -> float | None:
    """a / b to 3 places; None where either was not measured."""
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


class TimedEmbedder:
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
def timed_method(owner: Any, name: str, into: dict[str, float]) -> Iterator[None]:
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
