"""The layer file index: hand-made tars, malformed blobs, the cache, the parallel runner, dive's score."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import random
import tarfile

import pytest
import zstandard

from layerwise.errors import UserError
from layerwise.oci.layerindex import (
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    OPAQUE,
    SYMLINK,
    WHITEOUT,
    Cache,
    Entry,
    LayerIndex,
    LayerJob,
    dive_efficiency,
    effective_tree,
    index_layer,
    index_layers,
    scanner,
)
from layerwise.oci.layerindex.scanner import _CorruptLayer, _scan, _TarScanner


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(data: bytes) -> str:
    return "sha256:" + sha(data)


def make_tar(members, fmt=tarfile.PAX_FORMAT) -> bytes:
    """members: (name, kind, payload) with kind in file/dir/symlink/link/fifo; payload = bytes or link
    target. A dict payload for 'file' sets extra TarInfo attributes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, payload, *extra in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            for key, value in (extra[0] if extra else {}).items():
                setattr(info, key, value)
            data = None
            if kind == "file":
                data = payload
                info.size = len(data)
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
            elif kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, payload
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def index_bytes(blob: bytes, **kw) -> LayerIndex:
    return index_layer(io.BytesIO(blob), **kw)


def by_path(index: LayerIndex) -> dict[str, Entry]:
    return {e.path: e for e in index.entries}


# ------------------------------------------------------------------------------------------ entries

BIG = random.Random(7).randbytes(3 * (1 << 20) + 123)       # spans several 1 MiB chunks

BASIC = [
    ("./usr", "dir", None),
    ("./usr/bin", "dir", None),
    ("./usr/bin/tool", "file", b"#!/bin/sh\necho hi\n", {"mode": 0o755, "uid": 1000, "gid": 50}),
    ("./usr/bin/tool-again", "link", "./usr/bin/tool"),
    ("./usr/bin/sh", "symlink", "/bin/bash"),
    ("./usr/share/big.bin", "file", BIG),
    ("./usr/share/empty", "file", b""),
    ("./run/pipe", "fifo", None),
]


def test_regular_files_dirs_symlinks_hardlinks():
    tar = make_tar(BASIC)
    blob = gz(tar)
    ix = index_bytes(blob)
    assert ix.diff_id == digest(tar) and ix.size == len(tar)
    assert ix.digest == digest(blob) and ix.compressed_size == len(blob)
    assert ix.compression == "gzip" and ix.problems == ()
    e = by_path(ix)
    assert [x.path for x in ix.entries] == ["usr", "usr/bin", "usr/bin/tool", "usr/bin/tool-again",
                                            "usr/bin/sh", "usr/share/big.bin", "usr/share/empty", "run/pipe"]
    assert e["usr"].type == DIR and e["usr"].mode == 0o755
    tool = e["usr/bin/tool"]
    assert (tool.type, tool.mode, tool.uid, tool.gid, tool.size) == (FILE, 0o755, 1000, 50, 18)
    assert tool.sha256 == sha(b"#!/bin/sh\necho hi\n") and tool.link is None
    hard = e["usr/bin/tool-again"]
    assert (hard.type, hard.link, hard.sha256, hard.size) == (HARDLINK, "usr/bin/tool", tool.sha256, 0)
    assert (e["usr/bin/sh"].type, e["usr/bin/sh"].link, e["usr/bin/sh"].sha256) == (SYMLINK, "/bin/bash", None)
    assert e["usr/share/big.bin"].sha256 == sha(BIG) and e["usr/share/big.bin"].size == len(BIG)
    assert e["usr/share/empty"].sha256 == sha(b"")
    assert e["run/pipe"].type == FIFO
    assert ix.file_bytes == 18 + len(BIG)


def test_whiteouts_and_opaque_dirs():
    ix = index_bytes(gz(make_tar([
        ("etc", "dir", None),
        ("etc/.wh.motd", "file", b""),
        ("var/cache", "dir", None),
        ("var/cache/.wh..wh..opq", "file", b""),
        ("var/cache/new", "file", b"n"),
        (".wh.tmp", "file", b""),
    ])))
    assert [(x.path, x.type) for x in ix.entries] == [
        ("etc", DIR), ("etc/motd", WHITEOUT), ("var/cache", DIR), ("var/cache", OPAQUE),
        ("var/cache/new", FILE), ("tmp", WHITEOUT)]
    assert ix.entries[3] == Entry("var/cache", OPAQUE, 0o644, 0, 0, 0, None, None)
    assert not any(".wh." in x.path for x in ix.entries)


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_names_and_long_link_targets(fmt):
    deep = "/".join(f"directory-{i:02d}" for i in range(30)) + "/file-with-a-long-name.txt"
    assert len(deep) > 255
    target = "/opt/" + "x" * 150
    ix = index_bytes(make_tar([
        (deep, "file", b"deep"),
        ("short", "symlink", target),
        ("hard", "link", deep),
        ("caf\u00e9/\u00fcber.txt", "file", b"utf8"),
    ], fmt=fmt))
    e = by_path(ix)
    assert e[deep].sha256 == sha(b"deep")
    assert e["short"].link == target
    assert e["hard"].link == deep and e["hard"].sha256 == sha(b"deep")
    assert "caf\u00e9/\u00fcber.txt" in e
    assert ix.compression == "none"


def test_ustar_prefix_field():
    name = "p" * 120 + "/" + "n" * 90       # fits ustar's prefix + name, no PAX record needed
    tar = make_tar([(name, "file", b"x")], fmt=tarfile.USTAR_FORMAT)
    assert index_bytes(tar).entries[0].path == name


def test_hostile_paths_are_reported_not_followed():
    tar = make_tar([
        ("ok", "file", b"fine"),
        ("../evil", "file", b"escape"),
        ("a/../../evil2", "file", b"escape"),
        ("/etc/passwd", "file", b"root"),
        ("a/./b/../c", "file", b"normal"),          # `..` that stays inside: normalized, kept
        ("hl", "link", "../outside"),
        ("placeholder", "file", b"nul", {"pax_headers": {"path": "bad\x00name"}}),
        ("after", "file", b"still read"),
    ])
    ix = index_bytes(gz(tar))
    paths = [e.path for e in ix.entries]
    assert paths == ["ok", "a/c", "hl", "after"]
    assert by_path(ix)["after"].sha256 == sha(b"still read")
    assert by_path(ix)["hl"].sha256 is None and by_path(ix)["hl"].link == "../outside"
    text = "\n".join(ix.problems)
    for bad in ("'../evil'", "'a/../../evil2'", "'/etc/passwd'", "../outside", "NUL"):
        assert bad in text
    assert len(ix.problems) == 5
    assert ix.diff_id == digest(tar)      # skipped contents are still part of the diff_id


def test_scanner_handles_any_chunking():
    tar = make_tar(BASIC + [("x" * 300, "file", b"long name")])
    whole = _TarScanner()
    whole.feed(memoryview(tar))
    whole.finish()
    rng = random.Random(1)
    for _ in range(5):
        s, pos = _TarScanner(), 0
        while pos < len(tar):
            step = rng.choice([1, 7, 511, 512, 513, 4096, 100_000])
            s.feed(memoryview(tar[pos:pos + step]))
            pos += step
        s.finish()
        assert s.entries == whole.entries


# ------------------------------------------------------------------------------------------ formats

def test_zstd_and_plain_tar_give_the_same_index():
    tar = make_tar(BASIC)
    z = zstandard.ZstdCompressor(write_checksum=True).compress(tar)
    by_gzip, by_zstd, plain = index_bytes(gz(tar)), index_bytes(z), index_bytes(tar)
    assert (by_zstd.compression, plain.compression) == ("zstd", "none")
    assert by_gzip.entries == by_zstd.entries == plain.entries
    assert by_gzip.diff_id == by_zstd.diff_id == plain.diff_id == digest(tar)
    assert by_zstd.digest == digest(z) and plain.digest == digest(tar)


def test_multi_member_gzip_and_multi_frame_zstd():
    tar = make_tar(BASIC)
    half = len(tar) // 2
    assert index_bytes(gz(tar[:half]) + gz(tar[half:])).diff_id == digest(tar)
    c = zstandard.ZstdCompressor()
    assert index_bytes(c.compress(tar[:half]) + c.compress(tar[half:])).diff_id == digest(tar)


# ------------------------------------------------------------------------------------------ bad input

def layer_error(blob: bytes, **kw) -> str:
    with pytest.raises(UserError) as err:
        index_bytes(blob, name="app:layer-3", **kw)
    assert "app:layer-3" in str(err.value)
    return str(err.value)


def test_truncated_gzip():
    blob = gz(make_tar(BASIC))
    for cut in (len(blob) // 2, len(blob) - 4, 20):
        assert "truncated" in layer_error(blob[:cut])


def test_corrupted_gzip():
    blob = bytearray(gz(make_tar(BASIC)))
    blob[len(blob) // 2] ^= 0xFF
    blob[len(blob) // 2 + 1] ^= 0x55
    assert "corrupted" in layer_error(bytes(blob))
    crc = bytearray(gz(make_tar(BASIC)))
    crc[-6] ^= 1                                          # the CRC32 in the trailer
    assert "corrupted" in layer_error(bytes(crc))


def test_zlib_fallback_when_isal_is_missing(monkeypatch):
    import zlib
    monkeypatch.setattr(scanner, "_GzipFile", gzip.GzipFile)
    monkeypatch.setattr(scanner, "_GzipLibError", zlib.error)
    tar = make_tar(BASIC)
    blob = gz(tar)
    assert index_bytes(blob).diff_id == digest(tar)
    assert "truncated" in layer_error(blob[:len(blob) // 2])
    bad = bytearray(blob)
    bad[-6] ^= 1
    assert "corrupted" in layer_error(bytes(bad))


def test_truncated_and_corrupted_tar_and_zstd():
    tar = make_tar(BASIC)
    assert "ends early" in layer_error(tar[:1024 + 100])             # inside an entry
    assert "ends early" in layer_error(tar[:1536])                   # at a header boundary
    bad = bytearray(tar)
    bad[512 * 2 + 10] ^= 0x20                                        # a later header's name
    assert "checksum" in layer_error(bytes(bad))
    z = zstandard.ZstdCompressor(write_checksum=True).compress(tar)
    assert "truncated" in layer_error(z[:len(z) // 2])
    assert "truncated" in layer_error(z[:-2])
    broken = bytearray(z)
    broken[len(z) // 2] ^= 0xFF
    assert "corrupted" in layer_error(bytes(broken))
    assert "zstd" in layer_error(z + b"trailing garbage")


class Trickle:
    """A network-like stream: no readinto, at most 1000 bytes per read."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, size=-1):
        size = 1000 if size < 0 else min(size, 1000)
        out = self.data[self.pos:self.pos + size]
        self.pos += len(out)
        return out


@pytest.mark.parametrize("threads", [False, True])
def test_streams_that_trickle_with_and_without_the_reader_thread(threads):
    tar = make_tar(BASIC)
    for blob in (gz(tar), zstandard.ZstdCompressor().compress(tar), tar):
        ix = _scan(Trickle(blob), threads=threads)
        assert ix.diff_id == digest(tar) and ix.digest == digest(blob) and len(ix.entries) == len(BASIC)
    with pytest.raises(_CorruptLayer, match="truncated"):
        _scan(Trickle(gz(tar)[:5000]), threads=threads)
    with pytest.raises(_CorruptLayer, match="ends early"):
        _scan(io.BytesIO(tar[:3000]), threads=threads)


def test_not_a_layer():
    assert "not a tar" in layer_error(random.Random(3).randbytes(4096))
    assert "bzip2" in layer_error(b"BZh91AY&SY" + bytes(100))
    assert "empty" in layer_error(b"")


def test_wrong_digest_and_diff_id():
    tar = make_tar(BASIC)
    blob = gz(tar)
    good = index_bytes(blob, digest=digest(blob), diff_id=digest(tar))
    assert good.digest == digest(blob)
    assert "expected" in layer_error(blob, digest=digest(b"other"))
    assert "diff_id" in layer_error(blob, diff_id=digest(b"other"))
    assert "not a sha256 digest" in layer_error(blob, digest="md5:abc")


# ------------------------------------------------------------------------------------------ cache

class Untouchable(io.RawIOBase):
    def readable(self):
        return True

    def read(self, *a):
        raise AssertionError("the blob was read")

    readinto = read


def test_cache_second_index_reads_nothing(tmp_path):
    tar = make_tar(BASIC)
    blob = gz(tar)
    cache = Cache(tmp_path / "cache")
    first = index_bytes(blob, diff_id=digest(tar), cache=cache)
    assert (tmp_path / "cache" / "sha256" / f"{sha(tar)}.json").exists()
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    again = index_layer(Untouchable(), diff_id=digest(tar), cache=cache)
    assert again == first
    # known by its blob digest only (a registry manifest), or by both
    assert index_layer(Untouchable(), digest=digest(blob), cache=cache) == first
    assert index_layer(Untouchable(), digest=digest(blob), diff_id=digest(tar), cache=cache) == first
    # a callable source is not even called on a hit
    assert index_layer(lambda: pytest.fail("opened"), diff_id=digest(tar), cache=cache) == first


def test_cache_keeps_each_blob_of_a_diff_id(tmp_path):
    tar = make_tar(BASIC)
    blob, recompressed = gz(tar), gzip.compress(tar, compresslevel=1, mtime=0)
    assert blob != recompressed
    cache = Cache(tmp_path)
    a = index_bytes(blob, cache=cache)
    b = index_bytes(recompressed, digest=digest(recompressed), diff_id=digest(tar), cache=cache)  # a miss: read
    assert a.entries == b.entries and a.digest != b.digest
    hit = index_layer(Untouchable(), digest=digest(recompressed), diff_id=digest(tar), cache=cache)
    assert (hit.digest, hit.compressed_size) == (digest(recompressed), len(recompressed))
    assert index_layer(Untouchable(), digest=digest(blob), cache=cache).compressed_size == len(blob)


def test_unreadable_cache_file_is_a_miss(tmp_path):
    tar = make_tar(BASIC)
    cache = Cache(tmp_path)
    index_bytes(tar, cache=cache)
    (tmp_path / "sha256" / f"{sha(tar)}.json").write_text("{not json")
    assert cache.get(digest(tar)) is None
    assert index_bytes(tar, diff_id=digest(tar), cache=cache).diff_id == digest(tar)
    assert cache.get(digest(tar)) is not None


# ------------------------------------------------------------------------------------------ parallel

def _open_bytes(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def test_parallel_runner_isolates_a_bad_layer(tmp_path):
    good = []
    for i in range(3):
        tar = make_tar([(f"layer{i}/f", "file", bytes([i]) * 1000)])
        path = tmp_path / f"good{i}.tar.gz"
        path.write_bytes(gz(tar))
        good.append((path, tar))
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(gz(make_tar(BASIC))[:300])
    # and one opened by a callable
    jobs = [LayerJob(good[0][0], diff_id=digest(good[0][1])), LayerJob(bad, name="img:bad"),
            LayerJob(good[1][0]),
            LayerJob(functools.partial(_open_bytes, gz(good[2][1])), name="from-callable")]
    cache = Cache(tmp_path / "cache")
    seen = []
    results = index_layers(jobs, processes=2, cache=cache, progress=seen.append)
    assert len(seen) == len(jobs)
    assert [r.ok for r in results] == [True, False, True, True]
    assert "img:bad" in str(results[1].error) and "truncated" in str(results[1].error)
    assert results[0].index.diff_id == digest(good[0][1])
    assert results[3].index.diff_id == digest(good[2][1])
    # second run: the layer known by its diff_id comes from the cache; the bad one fails again
    again = index_layers(jobs, processes=2, cache=cache)
    assert [r.cached for r in again] == [True, False, False, False]
    assert again[0].index == results[0].index and not again[1].ok


def test_runner_indexes_a_repeated_layer_once(tmp_path):
    tar = make_tar([("f", "file", b"x")])
    path = tmp_path / "l.tar"
    path.write_bytes(tar)
    jobs = [LayerJob(path, diff_id=digest(tar), name="a"), LayerJob(path, diff_id=digest(tar), name="b")]
    results = index_layers(jobs, processes=1)
    assert results[0].index is results[1].index and results[1].job.name == "b"


# ------------------------------------------------------------------------------------------ images

def layer(*entries: tuple) -> LayerIndex:
    full = [Entry(p, t, 0o644, 0, 0, s, None, None) for p, t, s in entries]
    return LayerIndex("sha256:" + "0" * 64, "sha256:" + "0" * 64, 0, 0, tuple(full))


THREE_LAYERS = [
    layer(("a", DIR, 0), ("a/x", FILE, 100), ("a/y", FILE, 50), ("b", FILE, 30),
          ("d", DIR, 0), ("d/1", FILE, 10), ("d/2", FILE, 20)),
    layer(("a", DIR, 0), ("a/x", FILE, 120), ("b", WHITEOUT, 0), ("c", FILE, 40)),
    layer(("d", WHITEOUT, 0), ("c", FILE, 40), ("a", DIR, 0), ("a/y", FILE, 5)),
]


def test_dive_efficiency_by_hand():
    eff = dive_efficiency(THREE_LAYERS)
    # leaves visited per layer, with their sizes (whiteout of a file: 0; of a dir: its subtree, 10 + 20):
    #   a/x 100 + 120 = 220 (min 100)   a/y 50 + 5 = 55 (min 5)   b 30 + 0 = 30 (min 0)
    #   c 40 + 40 = 80 (min 40)         d/1 10   d/2 20   d (whiteout) 30
    assert eff.discovered_bytes == 220 + 55 + 30 + 80 + 10 + 20 + 30 == 445
    assert eff.minimum_bytes == 100 + 5 + 0 + 40 + 10 + 20 + 30 == 205
    assert eff.score == pytest.approx(205 / 445)
    assert eff.wasted_bytes == 220 + 55 + 30 + 80 == 385        # paths seen in two layers or more
    assert [i.path for i in eff.inefficiencies] == ["a/x", "c", "a/y", "b"]
    assert eff.size_bytes == 210 + 160 + 45 and eff.user_size_bytes == 205
    assert eff.wasted_user_percent == pytest.approx(385 / 205)
    assert dive_efficiency([THREE_LAYERS[0]]).score == 1.0
    assert dive_efficiency([]).score == 1.0


def test_effective_tree_applies_whiteouts_and_opaque_dirs():
    tree = effective_tree(THREE_LAYERS)
    assert {p: (t.layer, t.entry.size) for p, t in tree.items()} == {
        "a": (2, 0), "a/x": (1, 120), "a/y": (2, 5), "c": (2, 40)}
    opaque = effective_tree([
        layer(("v", DIR, 0), ("v/old", FILE, 1), ("v/sub", DIR, 0), ("v/sub/deep", FILE, 2), ("f", DIR, 0),
              ("f/in", FILE, 3)),
        layer(("v", OPAQUE, 0), ("v", DIR, 0), ("v/new", FILE, 4), ("f", FILE, 9)),
    ])
    assert {p: t.entry.size for p, t in opaque.items()} == {"v": 0, "v/new": 4, "f": 9}
    assert effective_tree([layer(("x", FILE, 1)), layer(("", OPAQUE, 0), ("y", FILE, 2))]).keys() == {"y"}


def test_index_of_real_tars_feeds_the_image_helpers():
    base = index_bytes(gz(make_tar([("app", "dir", None), ("app/lib.so", "file", b"L" * 500),
                                    ("app/conf", "file", b"c" * 100)])))
    top = index_bytes(gz(make_tar([("app", "dir", None), ("app/.wh.conf", "file", b""),
                                   ("app/lib.so", "file", b"M" * 500)])))
    tree = effective_tree([base, top])
    assert set(tree) == {"app", "app/lib.so"} and tree["app/lib.so"].entry.sha256 == sha(b"M" * 500)
    eff = dive_efficiency([base, top])
    assert eff.wasted_bytes == 1000 + 100 and eff.score == pytest.approx(500 / 1100)
