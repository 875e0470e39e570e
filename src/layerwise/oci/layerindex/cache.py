"""The disk cache of layer indexes, keyed by diff_id (and by blob digest through a small alias), so a
second audit of the same images reads no blob."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

from ...atomic import write_atomically
from ...errors import UserError
from .entries import CACHE_FORMAT, LayerIndex


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "layerwise" / "layers"


def _hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
        raise UserError(f"not a sha256 digest: {digest[:80]!r}")
    return hexpart


class Cache:
    """Layer indexes on disk, one JSON file per diff_id (`<dir>/sha256/<hex>.json`), with a small
    alias per blob digest (`<dir>/by-digest/<hex>`) so a layer known only by its digest is found too.
    Files are written to a temporary name and renamed: readers never see half a file, and a file that
    cannot be read back counts as a miss."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.dir = Path(directory) if directory is not None else default_cache_dir()

    def _path(self, diff_id: str) -> Path:
        return self.dir / "sha256" / f"{_hex(diff_id)}.json"

    def _alias(self, digest: str) -> Path:
        return self.dir / "by-digest" / _hex(digest)

    def _load(self, diff_id: str) -> dict | None:
        try:
            with open(self._path(diff_id), "rb") as f:
                raw = f.read()
        except OSError:
            return None
        collecting = gc.isenabled()
        gc.disable()       # tens of thousands of new objects, none cyclic: collections only cost time
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):   # RecursionError: a file nested 10,000 deep
            return None
        finally:
            if collecting:
                gc.enable()
        if not isinstance(data, dict) or data.get("v") != CACHE_FORMAT or data.get("diff_id") != diff_id:
            return None
        return data

    def get(self, diff_id: str | None = None, digest: str | None = None) -> LayerIndex | None:
        """The cached index of this layer, or None. With a digest, only an index made from that very
        blob answers (a recompressed blob has the same diff_id but another digest and size)."""
        if diff_id is None:
            if digest is None:
                return None
            try:
                diff_id = self._alias(digest).read_text().strip()
                _hex(diff_id)
            except (OSError, UserError):
                return None
        data = self._load(diff_id)
        if data is None:
            return None
        collecting = gc.isenabled()
        gc.disable()
        try:
            if digest is not None and digest not in data["blobs"]:
                return None
            return LayerIndex.from_json(data, digest)
        except (KeyError, TypeError, ValueError, StopIteration):
            return None
        finally:
            if collecting:
                gc.enable()

    def put(self, index: LayerIndex) -> None:
        """Store (or extend with another blob of the same diff_id) an index. Failing to write the
        cache never fails the audit: the index is still returned to the caller."""
        try:
            data = index.to_json()
            old = self._load(index.diff_id)
            if old is not None and isinstance(old.get("blobs"), dict):
                data["blobs"] = {**old["blobs"], **data["blobs"]}
            write_atomically(self._path(index.diff_id), json.dumps(data, separators=(",", ":")).encode())
            write_atomically(self._alias(index.digest), index.diff_id.encode())
        except OSError:
            pass


