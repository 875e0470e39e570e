"""Make built layers and configs byte-reproducible, as BuildKit's `rewrite-timestamp` does.

The legacy builder stamps every file and directory a step creates or touches with the build time,
and writes the build time and the build container's ID into the image config. Rewriting the layer
tar with every mtime clamped to a fixed epoch, and the config's times likewise, makes the same
content give the same diff_id, the same compressed digest and the same manifest on every rebuild.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import BinaryIO

try:   # ISA-L's gzip is several times faster than zlib's; the output is a valid gzip stream either way
    from isal.igzip import GzipFile
    GZIP_LEVEL = 2
except ImportError:   # pragma: no cover - isal is a dependency; this only guards odd platforms
    from gzip import GzipFile
    GZIP_LEVEL = 6


# The one epoch of reproducible output (2000-01-01): layer mtimes are clamped to it, config times
# set to it, generated context files stamped with it.
FIXED_MTIME = 946684800
_DROP_PAX = ("mtime", "atime", "ctime")


class _Hashing:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, sink: BinaryIO | None = None):
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        if self.sink is not None:
            self.sink.write(data)
        return len(data)

    def flush(self) -> None:
        if self.sink is not None:
            self.sink.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


class _Batching:
    """A write-only file that passes data on in pieces of at least BATCH bytes. ISA-L codes each write
    on its own: fed tarfile's small records it Huffman-codes even data that do not compress, where
    large pieces let it store them. Stored blocks are smaller, and the engines' Go gzip unpacks them
    at memory speed: the seed's 268 MB model layer unpacked in 1.0 s instead of 2.1 s on dockerd."""

    BATCH = 8 << 20

    def __init__(self, sink: BinaryIO):
        self.sink = sink
        self.pending = bytearray()

    def write(self, data) -> int:
        self.pending += data
        if len(self.pending) >= self.BATCH:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.pending:
            self.sink.write(bytes(self.pending))
            self.pending = bytearray()


@dataclass(frozen=True)
class NormalizedLayer:
    diff_id: str      # sha256 of the uncompressed tar
    digest: str       # sha256 of the gzip blob
    size: int         # bytes of the gzip blob
    unpacked: int     # bytes of the uncompressed tar


def normalize_layer(src: BinaryIO, dst: BinaryIO, epoch: int = FIXED_MTIME) -> NormalizedLayer:
    """Copy a layer tar from src to dst as gzip, with mtimes clamped to `epoch`.

    Entry order, names, modes, owners, links, xattrs and contents stay exactly as they were.
    """
    blob = _Hashing(dst)
    with GzipFile(fileobj=blob, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as gz:
        batches = _Batching(gz)
        tar_out = _Hashing(batches)
        with tarfile.open(fileobj=src, mode="r|") as tin, \
                tarfile.open(fileobj=tar_out, mode="w|", format=tarfile.PAX_FORMAT) as tout:
            for member in tin:
                member.mtime = min(int(member.mtime), epoch)
                member.pax_headers = {k: v for k, v in member.pax_headers.items() if k not in _DROP_PAX}
                data = tin.extractfile(member) if member.isreg() else None
                tout.addfile(member, data)
        batches.flush()
    return NormalizedLayer(tar_out.digest, blob.digest, blob.size, tar_out.size)


def epoch_iso(epoch: int = FIXED_MTIME) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def config_bytes(config: dict) -> bytes:
    """An image config as layerwise writes it: keys sorted, no spaces, so equal configs give equal
    digests."""
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def normalize_config(config: dict, diff_ids: list[str], epoch: int = FIXED_MTIME) -> dict:
    """The image config with the given diff_ids, fixed times, and no trace of the build container."""
    out = {k: v for k, v in config.items() if k not in ("container", "container_config")}
    out["created"] = epoch_iso(epoch)
    out["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    out["history"] = [{**h, "created": epoch_iso(epoch)} for h in config.get("history", [])]
    if isinstance(out.get("config"), dict):
        out["config"] = {**out["config"], "Hostname": "", "Image": ""}
    return out
