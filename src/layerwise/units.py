"""Byte sizes as people write them ("300MB", "1.2GiB") and as we print them."""

from __future__ import annotations

import math
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


_PREFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
           "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_BANDWIDTH = re.compile(r"^\s*(?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>[A-Za-z]*)"
                        r"\s*(?P<per>/\s*s(?:ec)?)?\s*$")
_BITS = re.compile(r"^(?P<prefix>[kmgt]i?)?bits?$", re.IGNORECASE)
_BYTES = re.compile(r"^(?P<prefix>[kKmMgGtT]i?)?B$")          # capital B only: "Mb" is a bit elsewhere


def parse_bandwidth(text: str | int | float) -> float:
    """Bits per second from "100Mbit", "100mbit/s", "1Gbit", "800kbit", "12.5MB/s" (bytes, x8),
    "10MiB/s" or a plain number (bits/s). ValueError on anything else.

    "Mbps", "Mb/s" and "mb" are refused on purpose: tools disagree on whether they mean bits or
    bytes (Linux tc reads "mbps" as megaBYTES), and a silent factor of 8 would spoil a benchmark.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a bandwidth: {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip()
        if s.startswith("-"):
            raise ValueError(f"a bandwidth cannot be negative: {text!r}")
        match = _BANDWIDTH.match(s)
        if not match:
            raise ValueError(f"not a bandwidth: {text!r} (write e.g. 100Mbit, 1Gbit/s, 12.5MB/s or 800000)")
        unit = match["unit"]
        if not unit:
            factor = 1                                            # plain number: bits per second
        elif m := _BITS.match(unit):
            factor = _PREFIX[(m["prefix"] or "").lower()]
        elif m := _BYTES.match(unit):
            factor = 8 * _PREFIX[(m["prefix"] or "").lower()]
        elif re.fullmatch(r"[kmgt]?i?(b|bps)", unit, re.IGNORECASE):
            raise ValueError(f"ambiguous bandwidth unit {unit!r} in {text!r}: write "
                             f"{unit[:-3] if unit.lower().endswith('bps') else unit[:-1]}bit/s for bits "
                             f"or {unit[:1].upper() if len(unit) > 1 else ''}B/s for bytes per second")
        else:
            raise ValueError(f"unknown bandwidth unit {unit!r} in {text!r} "
                             f"(use bit, kbit, Mbit, Gbit for bits or B, kB, MB, GB, MiB for bytes per second)")
        value = float(match["num"]) * factor
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"not a bandwidth: {text!r}")
    if value < 0:
        raise ValueError(f"a bandwidth cannot be negative: {text!r}")
    if value == 0:
        raise ValueError(f"a bandwidth must be more than zero: {text!r} (leave it unset for no limit)")
    return value


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
