"""Index the files of layer blobs by streaming each blob once: nothing is extracted, nothing is kept whole.

One pass over a blob (gzip, zstd or plain tar, told apart by their magic bytes) computes at once:
the sha256 of the blob as stored (its digest), the sha256 of the uncompressed tar (its diff_id), and for
every tar entry its normalized path, type, mode, owner, size, link target and, for regular files, the
sha256 of its contents. Whiteouts (`.wh.NAME`) and opaque directories (`.wh..wh..opq`) are recorded as
such, with the path they delete or mask. Paths that would leave the layer root (absolute, `..` escaping,
NUL) are reported in `problems` and never become entries.

A truncated or corrupted blob, or one whose digest or diff_id differs from the expected one, raises a
UserError naming the layer; there is never a partial index.

The package follows the work's seams:
- `entries`: the `Entry` and `LayerIndex` types;
- `scanner`: the tar/gzip/zstd stream reader;
- `cache`: indexes on disk per diff_id, so a second audit of the same images reads no blob;
- `jobs`: `index_layer` for one blob, `index_layers` for many in parallel processes;
- `tree`: `effective_tree` stacks an image's layers as the overlay filesystem does, and
  `dive_efficiency` scores wasted bytes the way `dive` does.
"""

from .cache import Cache, default_cache_dir
from .entries import (
    BLOCK,
    CHAR,
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    OPAQUE,
    SYMLINK,
    WHITEOUT,
    Entry,
    LayerIndex,
)
from .jobs import LayerJob, LayerResult, index_layer, index_layers, layer_jobs
from .scanner import clean_path
from .tree import Efficiency, Inefficiency, TreeEntry, dive_efficiency, effective_tree

__all__ = [
    "BLOCK", "CHAR", "DIR", "FIFO", "FILE", "HARDLINK", "OPAQUE", "SYMLINK", "WHITEOUT",
    "Cache", "Efficiency", "Entry", "Inefficiency", "LayerIndex", "LayerJob", "LayerResult", "TreeEntry",
    "clean_path", "default_cache_dir", "dive_efficiency", "effective_tree", "index_layer", "index_layers",
    "layer_jobs",
]
