"""What an index is: one `Entry` per tar entry, and a layer's `LayerIndex` (its digests, sizes, entries
and the oddities met on the way)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

CACHE_FORMAT = 2                  # version of LayerIndex.to_json's form, as stored by the cache

# entry types
FILE, DIR, SYMLINK, HARDLINK = "file", "dir", "symlink", "hardlink"
CHAR, BLOCK, FIFO, WHITEOUT, OPAQUE = "char", "block", "fifo", "whiteout", "opaque"


class Entry(NamedTuple):
    """One tar entry. `path` is normalized (no leading ./ or /; '' is the layer root, only for an
    opaque marker at the top). For a whiteout, `path` is what it deletes; for an opaque marker, the
    directory whose lower contents it masks. `size` is the tar header's (0 for links and directories;
    a hard link carries its target's `sha256` and names it in `link`; a sparse file has its full size
    and no hash). `sha256` is bare hex; `link` is a symlink's target as written, or a hard link's
    target path normalized."""
    path: str
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    sha256: str | None
    link: str | None


@dataclass(frozen=True)
class LayerIndex:
    diff_id: str                      # sha256 of the uncompressed tar
    digest: str                       # sha256 of the blob as stored
    compressed_size: int              # bytes of the blob as stored
    size: int                         # bytes of the uncompressed tar
    entries: tuple[Entry, ...]
    problems: tuple[str, ...] = ()    # hostile paths and other oddities, reported, never followed
    compression: str = "gzip"         # gzip, zstd or none

    @property
    def file_bytes(self) -> int:
        """Bytes of regular-file contents in this layer."""
        return sum(e.size for e in self.entries if e.type == FILE)

    def __reduce__(self):
        # plain tuples pickle several times faster than NamedTuples (results cross process boundaries)
        return (_rebuild_index, (self.diff_id, self.digest, self.compressed_size, self.size,
                                 list(map(tuple, self.entries)), self.problems, self.compression))

    def to_json(self) -> dict[str, Any]:
        """The cache's form: entries stored by column (a third faster to load than rows)."""
        columns = {name: [e[i] for e in self.entries] for i, name in enumerate(Entry._fields)}
        return {"v": CACHE_FORMAT, "diff_id": self.diff_id, "size": self.size,
                "blobs": {self.digest: [self.compressed_size, self.compression]},
                "problems": list(self.problems), "entries": columns}

    @classmethod
    def from_json(cls, data: dict[str, Any], digest: str | None = None) -> "LayerIndex":
        blobs = data["blobs"]
        if digest is None:
            digest = next(iter(blobs))
        compressed_size, compression = blobs[digest]
        columns = data["entries"]
        rows = zip(*(columns[name] for name in Entry._fields), strict=True)
        entries = tuple(map(_new_entry, rows))
        return cls(data["diff_id"], digest, compressed_size, data["size"], entries,
                   tuple(data.get("problems", ())), compression)


_new_entry = functools.partial(tuple.__new__, Entry)    # Entry from a tuple, without a Python frame


def _rebuild_index(diff_id, digest, compressed_size, size, rows, problems, compression) -> LayerIndex:
    return LayerIndex(diff_id, digest, compressed_size, size, tuple(map(_new_entry, rows)), problems,
                      compression)
