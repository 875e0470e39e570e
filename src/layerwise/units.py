"""Byte sizes as people write them ("300MB", "1.2GiB") and as we print them."""

from __future__ import annotations

import re

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int | float) -> int:
    """Bytes from "300MB" (SI), "1.2GiB" (binary) or a plain number; ValueError if unreadable."""
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"a size cannot be negative: {text!r}")
        return int(text)
    match = _SIZE.match(str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (write e.g. 300MB, 1.2GiB or 4096)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(n: int | float | None) -> str:
    """Short human form in SI units, as registries and `docker images` show sizes."""
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(bit|bps|B)?(/s)?\s*$")
_PREFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_rate(text: str | int | float) -> float:
    """Bits per second from "100Mbit", "1Gbit/s", "12.5MB/s" (bytes) or a plain number of bits."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"a bandwidth must be positive: {text!r}")
        return float(text)
    m = _RATE.match(str(text))
    if not m or float(m[1]) <= 0 or (m[3] is None and (m[2] or m[4])):
        raise ValueError(f"not a bandwidth: {text!r} (write e.g. 100Mbit, 1Gbit or 12.5MB/s)")
    return float(m[1]) * _PREFIX[m[2].lower()] * (8 if m[3] == "B" else 1)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|)\s*$")


def parse_duration(text: str | int | float) -> float:
    """Seconds from "50ms", "0.3s" or a plain number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"a duration cannot be negative: {text!r}")
        return float(text)
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"not a duration: {text!r} (write e.g. 50ms or 0.3s)")
    return float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)


def format_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{s / 3600:.1f} h"
