"""mutate: layers and configs made byte-reproducible, checked on hand-made tars and configs."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import tarfile

from layerwise.oci.layerindex import DIR, FILE, HARDLINK, SYMLINK, index_layer
from layerwise.oci.mutate import FIXED_MTIME, epoch_iso, normalize_config, normalize_layer

LATER = FIXED_MTIME + 86_400 * 365        # a build time after the fixed epoch
EARLIER = FIXED_MTIME - 86_400            # a file time before it: kept, only later times are clamped


def make_tar(mtime: float, *, atime: bool = False) -> bytes:
    """A small layer: a directory, two files (one with an xattr), a symlink and a hard link."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name, kind, data=b"", **attrs):
            info = tarfile.TarInfo(name)
            info.type, info.mtime, info.size = kind, mtime, len(data)
            for key, value in attrs.items():
                setattr(info, key, value)
            if atime:
                info.pax_headers = {**info.pax_headers, "atime": str(mtime), "ctime": str(mtime)}
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add("opt", tarfile.DIRTYPE, mode=0o755)
        add("opt/app.py", tarfile.REGTYPE, b"print('hi')\n", mode=0o644, uid=1000, gid=1000)
        add("opt/cap", tarfile.REGTYPE, b"\x7fELF", mode=0o4755,
            pax_headers={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"})
        add("opt/link", tarfile.SYMTYPE, linkname="app.py")
        add("opt/hard", tarfile.LNKTYPE, linkname="opt/app.py")
    return buf.getvalue()


def normalized(tar: bytes, epoch: int = FIXED_MTIME) -> tuple[object, bytes]:
    out = io.BytesIO()
    result = normalize_layer(io.BytesIO(tar), out, epoch)
    return result, out.getvalue()


def members(tar: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r") as t:
        return t.getmembers()


def test_digests_describe_the_blob_written():
    result, blob = normalized(make_tar(LATER))
    tar = gzip.decompress(blob)
    assert result.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert result.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert result.size == len(blob)
    assert result.unpacked == len(tar)    # what a host writes out: the tar, padding included
    assert blob[4:8] == bytes(4)          # the gzip header's own timestamp is zero


def test_same_content_built_at_other_times_gives_the_same_bytes():
    one, blob_one = normalized(make_tar(LATER))
    two, blob_two = normalized(make_tar(LATER + 3600, atime=True))
    assert one == two and blob_one == blob_two


def test_mtimes_clamped_and_access_times_dropped():
    _, late = normalized(make_tar(LATER, atime=True))
    _, early = normalized(make_tar(EARLIER))
    for m in members(gzip.decompress(late)):
        assert m.mtime == FIXED_MTIME
        assert not {"mtime", "atime", "ctime"} & m.pax_headers.keys()
    assert {m.mtime for m in members(gzip.decompress(early))} == {EARLIER}
    _, other_epoch = normalized(make_tar(LATER), epoch=EARLIER)
    assert {m.mtime for m in members(gzip.decompress(other_epoch))} == {EARLIER}


def test_everything_but_times_is_kept():
    original = make_tar(LATER)
    _, blob = normalized(original)
    before, after = members(original), members(gzip.decompress(blob))
    fields = ("name", "type", "mode", "uid", "gid", "size", "linkname")
    assert [[getattr(m, f) for f in fields] for m in after] == [[getattr(m, f) for f in fields] for m in before]
    cap = next(m for m in after if m.name == "opt/cap")
    assert cap.pax_headers["SCHILY.xattr.security.capability"] == "\x01\x00\x00\x02"
    # read back by layerwise's own scanner: the same files with the same contents
    index = index_layer(io.BytesIO(blob))
    by_path = {e.path: e for e in index.entries}
    assert [by_path[p].type for p in ("opt", "opt/app.py", "opt/link", "opt/hard")] == [DIR, FILE, SYMLINK, HARDLINK]
    assert by_path["opt/app.py"].sha256 == hashlib.sha256(b"print('hi')\n").hexdigest()
    assert by_path["opt/hard"].sha256 == by_path["opt/app.py"].sha256
    assert (by_path["opt/cap"].mode, by_path["opt/app.py"].uid) == (0o4755, 1000)


def test_normalize_config_fixes_times_and_drops_the_build_container():
    config = {
        "architecture": "amd64", "os": "linux", "created": "2026-11-30T02:00:00.123Z",
        "container": "0123abcd", "container_config": {"Cmd": ["/bin/sh", "-c", "echo hi"]},
        "config": {"Hostname": "0123abcd", "Image": "sha256:" + "a" * 64, "Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]},
        "history": [{"created": "2026-11-30T01:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file"},
                    {"created": "2026-11-30T02:00:00Z", "created_by": "RUN echo hi", "empty_layer": True}],
    }
    snapshot = repr(config)
    diff_ids = ["sha256:" + "2" * 64, "sha256:" + "3" * 64]
    out = normalize_config(config, diff_ids)
    assert repr(config) == snapshot                       # the input is left as it was
    assert "container" not in out and "container_config" not in out
    assert out["created"] == epoch_iso() == "2000-01-01T00:00:00Z"        # FIXED_MTIME, 946684800
    assert out["rootfs"] == {"type": "layers", "diff_ids": diff_ids}
    assert [h["created"] for h in out["history"]] == [epoch_iso()] * 2
    assert [h["created_by"] for h in out["history"]] == [h["created_by"] for h in config["history"]]
    assert out["history"][1]["empty_layer"] is True
    assert out["config"] == {"Hostname": "", "Image": "", "Env": ["PATH=/bin"], "Cmd": ["sh"]}
    assert (out["architecture"], out["os"]) == ("amd64", "linux")


def test_normalize_config_without_runtime_part_or_history():
    out = normalize_config({"os": "linux"}, [], epoch=86_400)
    assert out == {"os": "linux", "created": "1970-01-02T00:00:00Z", "rootfs": {"type": "layers", "diff_ids": []},
                   "history": []}


def test_content_that_does_not_compress_is_stored_not_coded():
    """A model file of random bytes: the blob barely exceeds the tar (stored deflate blocks), where
    Huffman-coding it would add about 0.06 % and make the engines' Go gzip unpack it half as fast."""
    data = random.Random(7).randbytes(24 << 20)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("models/model.bin")
        info.size, info.mtime = len(data), LATER
        tar.addfile(info, io.BytesIO(data))
    result, blob = normalized(buf.getvalue())
    assert data in gzip.decompress(blob)
    assert result.size < len(buf.getvalue()) * 1.0002
