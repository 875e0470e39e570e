"""Hostile images on disk and hostile import descriptions: `docker save` archives and OCI layouts with
escaping names and links, huge declared sizes, truncated gzip, deep JSON, FIFOs; `import.json` with
names that climb out, binary bytes, deep nesting. Each gives one error line (an audit goes on with the
other images) or is read correctly, never extracted: nothing appears outside the test's folder."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import FakeImage, layer_tar, legacy_archive, sha256, write_blob
from layerwise.oci.mediatypes import OCI_LAYER_GZIP

GOOD_TAG = "localhost:5000/hostile/ok:v1"


def layerwise(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    # The time-out only keeps a blocked read (a FIFO) from hanging the run; nothing is asserted on time.
    return subprocess.run([sys.executable, "-m", "layerwise", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "XDG_CACHE_HOME": str(cache)}, timeout=300)


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if "cache" not in p.relative_to(root).parts}


def audit(tmp_path: Path, *images: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`audit --json` of a good archive and the hostile ones: the good one is still audited, each bad
    one is its own error line on stderr, and nothing was written beside the inputs (the layer cache
    aside, which is the test's own)."""
    good = legacy_archive(tmp_path / "good.tar", [([GOOD_TAG], FakeImage({"ok": b"fine"}))])
    before = snapshot(tmp_path.parent)
    result = layerwise("audit", str(good), *images, "--json", cwd=tmp_path, cache=tmp_path / "cache")
    assert "Traceback" not in result.stderr, result.stderr
    assert snapshot(tmp_path.parent) == before
    doc = json.loads(result.stdout)
    by_name = {i["name"]: i for i in doc["images"]}
    assert by_name[str(good)]["error"] is None and by_name[str(good)]["layers"] == 1
    return result, by_name


def assert_image_error(result, by_name, image: str, *words: str) -> None:
    error = by_name[image]["error"]
    assert error, by_name[image]
    for word in words:
        assert word in error, error
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("layerwise: error:")]
    assert any(image in line for line in lines), result.stderr


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def oci_layout(root: Path, layer_blob: bytes, diff_id: str, *, index_raw: bytes | None = None) -> Path:
    root.mkdir()
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}})
    config_digest = write_blob(root, config.encode())
    layer_digest = write_blob(root, layer_blob)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": config_digest, "size": len(config)},
                           "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer_digest,
                                       "size": len(layer_blob)}]}).encode()
    manifest_digest = write_blob(root, manifest)
    (root / "index.json").write_bytes(index_raw or json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
         "size": len(manifest)}]}).encode())
    return root


# ----------------------------------------------------------------------------- layers (inside an image)

def test_layer_members_that_climb_out_or_link_out_are_warnings_and_never_extracted(tmp_path):
    hostile = tar_bytes([member("ok", b"fine"), member("../../escape", b"x"), member("/etc/evil", b"x"),
                         member("link", kind=tarfile.SYMTYPE, link="../../../../etc/passwd"),
                         member("hard", kind=tarfile.LNKTYPE, link="../../outside"), member("after", b"read")])
    layout = oci_layout(tmp_path / "layout", gzip.compress(hostile, mtime=0), sha256(hostile))
    result, by_name = audit(tmp_path, str(layout))
    entry = by_name[str(layout)]
    assert entry["error"] is None and entry["layers"] == 1
    problems = json.dumps(entry["problems"])
    for bad in ("../../escape", "/etc/evil", "../../outside"):
        assert bad in problems
    assert not (tmp_path.parent / "escape").exists() and not Path("/etc/evil").exists()


def test_a_truncated_gzip_layer(tmp_path):
    tar = layer_tar({"a": os.urandom(50_000)})
    blob = gzip.compress(tar, mtime=0)[:-2000]
    layout = oci_layout(tmp_path / "layout", blob, sha256(tar))
    result, by_name = audit(tmp_path, str(layout))
    assert_image_error(result, by_name, str(layout), "layer 1/1")


def test_a_layer_whose_tar_header_declares_a_huge_size(tmp_path):
    """A header saying 8 GiB follow (ustar's most), then the tar ends: the reader reads what is there, in bounded memory."""
    info = tarfile.TarInfo("big")
    info.size = (8 << 30) - 1
    header = info.tobuf(tarfile.USTAR_FORMAT)
    tar = header + b"x" * 4096
    layout = oci_layout(tmp_path / "layout", gzip.compress(tar, mtime=0), sha256(tar))
    result, by_name = audit(tmp_path, str(layout))
    assert_image_error(result, by_name, str(layout), "layer 1/1")


# ----------------------------------------------------------------------------- docker save archives

def _archive(path: Path, members: list[tuple]) -> Path:
    path.write_bytes(tar_bytes(members))
    return path


def test_an_archive_whose_manifest_names_files_outside_it(tmp_path):
    """manifest.json names `../../etc/passwd` and an absolute path: looked up inside the tar (read in
    place, never extracted), so they are just missing."""
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha256(b"x"), sha256(b"y")]}}).encode()
    manifest = json.dumps([{"Config": "c.json", "RepoTags": ["t/x:v1"],
                            "Layers": ["../../../../etc/passwd", "/etc/passwd"]}]).encode()
    archive = _archive(tmp_path / "escape.tar", [member("manifest.json", manifest), member("c.json", config)])
    result, by_name = audit(tmp_path, str(archive))
    assert_image_error(result, by_name, str(archive), "missing")


def test_an_archive_whose_layer_is_a_link_out_of_it(tmp_path):
    image = FakeImage({"a": b"a"})
    diff_id = sha256(image.tars[0])
    manifest = json.dumps([{"Config": "c.json", "RepoTags": ["t/x:v1"], "Layers": ["l/layer.tar"]}]).encode()
    archive = _archive(tmp_path / "link.tar", [
        member("manifest.json", manifest), member("c.json", image.config_raw),
        member("l/layer.tar", kind=tarfile.SYMTYPE, link="../../../../etc/passwd")])
    assert diff_id in image.config_raw.decode()
    result, by_name = audit(tmp_path, str(archive))
    assert_image_error(result, by_name, str(archive), "missing")


def test_an_archive_member_declaring_more_bytes_than_the_file_has(tmp_path):
    full = legacy_archive(tmp_path / "full.tar", [(["t/x:v1"], FakeImage({"a": os.urandom(20_000)}))])
    data = bytearray(full.read_bytes())
    with tarfile.open(full) as tar:
        layer = next(m for m in tar if m.name.endswith("layer.tar"))
    info = tarfile.TarInfo(layer.name)
    info.size = 1 << 40                             # a terabyte, in a 40 kB file
    header = info.tobuf(tarfile.GNU_FORMAT)
    data[layer.offset:layer.offset + 512] = header[-512:]
    huge = tmp_path / "huge.tar"
    huge.write_bytes(bytes(data))
    full.unlink()
    result, by_name = audit(tmp_path, str(huge))
    assert_image_error(result, by_name, str(huge))


def test_an_archive_with_deep_json(tmp_path):
    archive = _archive(tmp_path / "deep.tar", [member("manifest.json", b"[" * 10_000 + b"]" * 10_000)])
    result, by_name = audit(tmp_path, str(archive))
    assert_image_error(result, by_name, str(archive), "not valid JSON")


def test_binary_noise_and_gzip_noise_as_archives(tmp_path):
    noise = tmp_path / "noise.tar"
    noise.write_bytes(bytes((i * 7919 + 13) % 256 for i in range(20_000)))
    gz = tmp_path / "cut.tar.gz"
    gz.write_bytes(gzip.compress(b"x" * 100_000)[:500])
    result, by_name = audit(tmp_path, str(noise), str(gz))
    assert_image_error(result, by_name, str(noise), "not")
    assert_image_error(result, by_name, str(gz), "compressed archive")


def test_a_fifo_as_an_archive_is_never_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.tar")
    result, by_name = audit(tmp_path, str(tmp_path / "pipe.tar"))
    assert_image_error(result, by_name, str(tmp_path / "pipe.tar"), "neither")


# ----------------------------------------------------------------------------- OCI layouts

def test_an_oci_layout_with_deep_or_binary_index(tmp_path):
    tar = layer_tar({"a": b"a"})
    deep = oci_layout(tmp_path / "deep", gzip.compress(tar), sha256(tar), index_raw=b"{\"a\":" * 10_000 + b"1" + b"}" * 10_000)
    binary = oci_layout(tmp_path / "binary", gzip.compress(tar), sha256(tar), index_raw=b"\xff\xfe\x00garbage")
    result, by_name = audit(tmp_path, str(deep), str(binary))
    assert_image_error(result, by_name, str(deep), "not valid JSON")
    assert_image_error(result, by_name, str(binary), "not valid JSON")


def test_an_oci_layout_whose_blobs_are_fifos_or_links_to_devices(tmp_path):
    tar = layer_tar({"a": b"a"})
    blob = gzip.compress(tar, mtime=0)
    fifo = oci_layout(tmp_path / "fifo", blob, sha256(tar))
    path = fifo / "blobs" / "sha256" / sha256(blob)[7:]
    path.unlink()
    os.mkfifo(path)
    device = oci_layout(tmp_path / "device", blob, sha256(tar))
    path = device / "blobs" / "sha256" / sha256(blob)[7:]
    path.unlink()
    os.symlink("/dev/zero", path)
    result, by_name = audit(tmp_path, str(fifo), str(device))
    assert_image_error(result, by_name, str(fifo), "missing")
    assert_image_error(result, by_name, str(device), "missing")


# ----------------------------------------------------------------------------- import.json

IMPORT = {"schema": "layerwise.import/v1", "registry": "localhost:5000", "project": "hostile",
          "bases": [{"name": "hostile/base-0123abcd", "ref": "localhost:5000/hostile/base-0123abcd:lw-1",
                     "dockerfile": "bases/hostile/base-0123abcd/Dockerfile", "context": None, "parent": None,
                     "used_by": ["a"]}],
          "apps": [{"name": "a", "original": "orig/Dockerfile", "context": None, "dockerfile": "apps/a/Dockerfile",
                    "bases": ["hostile/base-0123abcd"], "unbuildable": None}]}


def _import_dir(tmp_path: Path, doc: dict | None = None, raw: bytes | None = None) -> Path:
    folder = tmp_path / "refactored"
    folder.mkdir()
    (folder / "import.json").write_bytes(raw if raw is not None else json.dumps(doc).encode())
    return folder


def _edited(path: tuple, value) -> dict:
    doc = json.loads(json.dumps(IMPORT))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


@pytest.mark.parametrize("case, words", [
    ("app-dotdot", "is not a name"), ("app-absolute", "is not a name"), ("base-dotdot", "is not a name"),
    ("binary", "not UTF-8"), ("deep", "nested too deep"), ("dockerfile-fifo", "is not a file"),
    ("dockerfile-device", "is not a file"), ("huge", "larger than"),
])
def test_hostile_import_descriptions(tmp_path, case, words):
    """`build DIR` and `simulate DIR` read DIR/import.json first: one error line, nothing written
    (no state file, no lock) and the engine is never asked."""
    if case == "huge":
        raw = b'{"schema": "layerwise.import/v1", "pad": "' + b"x" * (65 << 20) + b'"}'
        folder = _import_dir(tmp_path, raw=raw)
    elif case in ("binary", "deep"):
        folder = _import_dir(tmp_path, raw={"binary": b"\x89PNG\r\n\x1a\n\xff\xfe", "deep": b"[" * 10_000 + b"]" * 10_000}[case])
    elif case.startswith("dockerfile"):
        folder = _import_dir(tmp_path, IMPORT)
        target = folder / "apps" / "a" / "Dockerfile"
        target.parent.mkdir(parents=True)
        os.mkfifo(target) if case == "dockerfile-fifo" else os.symlink("/dev/zero", target)
    else:
        path, value = {"app-dotdot": (("apps", 0, "name"), "../x"), "app-absolute": (("apps", 0, "name"), "/tmp/x"),
                       "base-dotdot": (("bases", 0, "name"), "../../x")}[case]
        folder = _import_dir(tmp_path, _edited(path, value))
    before = snapshot(tmp_path)
    for args in (["build", str(folder), "--dry-run"], ["plan", str(folder)]):
        result = layerwise(*args, cwd=tmp_path, cache=tmp_path / "cache")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"layerwise: error: {folder / 'import.json'}"), result.stderr
        assert words in lines[0]
    assert snapshot(tmp_path) == before


def test_a_layer_cache_entry_nested_10000_deep_is_a_miss(tmp_path):
    """The layer-index cache (~/.cache/layerwise) is read back by `audit`: a hostile entry is a miss."""
    from layerwise.oci.layerindex.cache import Cache
    diff_id = sha256(b"some layer")
    entry = tmp_path / "sha256" / f"{diff_id[7:]}.json"
    entry.parent.mkdir()
    entry.write_bytes(b"[" * 10_000 + b"]" * 10_000)
    assert Cache(tmp_path).get(diff_id) is None


def test_an_oci_layout_whose_index_is_huge(tmp_path):
    """index.json of 100 MiB (sparse: no disk used) is refused after reading at most 64 MiB."""
    tar = layer_tar({"a": b"a"})
    layout = oci_layout(tmp_path / "huge", gzip.compress(tar), sha256(tar))
    with open(layout / "index.json", "r+b") as f:
        f.truncate(100 << 20)
    result, by_name = audit(tmp_path, str(layout))
    assert_image_error(result, by_name, str(layout), "implausibly large")
