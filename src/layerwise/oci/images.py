"""Read images, wherever they are: one immutable view, one implementation per source.

Modelled on go-containerregistry's `pkg/v1`: an `Image` gives its manifest digest, config, diff_ids
and layers, and streams each layer blob *as stored* (compressed or not), so the code that reads it
never knows where the image came from. Sources:

- `RegistryImage`       a registry (Registry HTTP API v2), picking the platform from an index;
- `DockerArchiveImage`  a `docker save` tar, the Docker 20.10 form (manifest.json, <id>/layer.tar)
                        or the OCI-layout form of newer Docker (index.json, blobs/sha256/…), read in
                        place through the tar's member offsets, never extracted;
- `OCILayoutImage`      an OCI image layout directory (oci-layout, index.json, blobs/);
- `EngineImage`         an image in the local Docker Engine, through its `docker save` stream.

`open_image(spec)` picks the source from what the user typed. Every blob read is checked against
its digest as it streams (the error comes on the read that reaches its end); every problem a user
can cause is a UserError naming the image and, where it applies, the layer.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import tarfile
import tempfile
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, ClassVar

from ..errors import UserError
from .mediatypes import (
    CONFIG_TYPES,
    IMAGE_MANIFEST_TYPES,
    INDEX_TYPES,
    LAYER_TYPES,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
)
from .reference import Reference
from .registry import DigestMismatch, Registry, VerifyingReader, check_digest

__all__ = ["DEFAULT_PLATFORM", "LayerRef", "Image", "RegistryImage", "DockerArchiveImage", "OCILayoutImage",
           "EngineImage", "open_image", "parse_platform", "select_platform"]

DEFAULT_PLATFORM = "linux/amd64"

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
_SMALL = 64 << 20          # the most a manifest, index or config may weigh: they are read whole
_MAX_NESTING = 8           # indexes within indexes
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class LayerRef:
    """One layer of an image. `digest` and `size` describe the blob as stored by the source (the
    compressed blob in a registry or OCI layout; the plain tar of a Docker 20.10 `docker save`, where
    digest == diff_id); `diff_id` is the digest of the uncompressed tar."""

    digest: str
    diff_id: str
    size: int
    media_type: str

    @property
    def compression(self) -> str | None:
        """'gzip', 'zstd' or None (a plain tar), from the media type."""
        if self.media_type.endswith("+zstd"):
            return "zstd"
        if self.media_type.endswith(("gzip", "+gzip")):
            return "gzip"
        return None


class Image(ABC):
    """A read-only view of one image. Everything but open_layer is fixed when the image is opened;
    the properties return fresh copies, so a caller cannot change what the next caller sees."""

    source: ClassVar[str] = ""

    def __init__(self, name: str, manifest_digest: str | None, config_raw: bytes,
                 layers: list[tuple[str, int, str]], platform: str | None = None,
                 manifest_raw: bytes | None = None):
        """`layers`: (digest, size, media_type) of each blob as stored, bottom first; the diff_ids come
        from the config and must be as many. `manifest_raw`: the manifest's bytes, when there is one."""
        self._name = name
        self._manifest_digest = manifest_digest
        self._manifest_raw = None if manifest_raw is None else bytes(manifest_raw)
        self._config_raw = bytes(config_raw)
        self._config_digest = "sha256:" + hashlib.sha256(self._config_raw).hexdigest()
        self._platform = platform
        config = _json_object(self._config_raw, f"the config of image {name}")
        rootfs = config.get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list):
            raise UserError(f"the config of image {name} lists no rootfs.diff_ids: not a container image")
        for diff_id in diff_ids:
            check_digest(diff_id, f"the config of image {name}")
        if len(diff_ids) != len(layers):
            raise UserError(f"image {name} is inconsistent: its config lists {len(diff_ids)} layers "
                            f"(diff_ids), its manifest {len(layers)}")
        self._layers = tuple(LayerRef(digest, diff_id, size, media_type)
                             for (digest, size, media_type), diff_id in zip(layers, diff_ids, strict=True))

    @property
    def name(self) -> str:
        """What the user typed to name the image."""
        return self._name

    @property
    def manifest_digest(self) -> str | None:
        """Digest of the image manifest (the platform's, under an index); None when the source has
        no manifest (a Docker 20.10 `docker save`)."""
        return self._manifest_digest

    @property
    def manifest_raw(self) -> bytes | None:
        """The image manifest's bytes as the source holds them (what a pull downloads); None when
        the source has no manifest."""
        return self._manifest_raw

    @property
    def manifest_media_type(self) -> str | None:
        """The manifest's media type; an OCI manifest may leave it out, and then it is OCI's."""
        if self._manifest_raw is None:
            return None
        return str(json.loads(self._manifest_raw).get("mediaType") or OCI_MANIFEST)

    @property
    def config(self) -> dict:
        return json.loads(self._config_raw)

    @property
    def config_raw(self) -> bytes:
        return self._config_raw

    @property
    def config_digest(self) -> str:
        """sha256 of the config bytes: the image ID the Docker Engine shows."""
        return self._config_digest

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self._layers]

    @property
    def layers(self) -> list[LayerRef]:
        return list(self._layers)

    @property
    def platform(self) -> str | None:
        """os/arch[/variant] from the config, when it says."""
        if self._platform:
            return self._platform
        config = self.config
        if config.get("os") and config.get("architecture"):
            return "/".join(p for p in (config["os"], config["architecture"], config.get("variant")) if p)
        return None

    def open_layer(self, i: int) -> BinaryIO:
        """Stream layer i (0 = bottom) as stored, compressed or not. The bytes are checked against
        the layer's digest as they are read: a mismatch raises DigestMismatch (a UserError naming the
        image and the layer) on the read that reaches the end. Close the file (or use `with`)."""
        layer = self._layers[i]
        return self._open_layer(i, layer, self._layer_what(i))

    @abstractmethod
    def _open_layer(self, i: int, layer: LayerRef, what: str) -> BinaryIO:
        ...

    def _layer_what(self, i: int) -> str:
        return f"layer {i + 1}/{len(self._layers)} ({self._layers[i].digest}) of image {self._name}"

    def close(self) -> None:  # noqa: B027 - a no-op by default: only some sources hold something
        """Release what the source holds (a connection, a temporary file)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name!r}, {len(self._layers)} layers)"


# -- platforms --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def parse_platform(text: str | None) -> Platform:
    """'linux/arm64/v8' → Platform('linux', 'arm64', 'v8'); None → the default, linux/amd64."""
    parts = (text or DEFAULT_PLATFORM).strip().split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise UserError(f"platform {text!r} is not OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm/v7")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def _variant(architecture: str, variant: str | None) -> str | None:
    if architecture == "arm64" and variant in (None, "", "v8"):
        return "v8"
    return variant or None


def _descriptor_platform(descriptor: dict) -> Platform | None:
    p = descriptor.get("platform")
    if not isinstance(p, dict) or not p.get("os") or not p.get("architecture"):
        return None
    return Platform(str(p["os"]), str(p["architecture"]), p.get("variant") or None)


def select_platform(descriptors: list[dict], platform: str | None, what: str) -> dict:
    """The descriptor of an index for `platform` (default linux/amd64); without a variant asked,
    the first entry of that OS and architecture. A UserError lists the platforms present."""
    want = parse_platform(platform)
    present: list[str] = []
    for descriptor in descriptors:
        if not isinstance(descriptor, dict):
            continue
        have = _descriptor_platform(descriptor)
        if have is None or have.os == "unknown":     # attestations and the like: not images
            continue
        present.append(str(have))
        if have.os == want.os and have.architecture == want.architecture and (
                want.variant is None
                or _variant(have.architecture, have.variant) == _variant(want.architecture, want.variant)):
            return descriptor
    listed = ", ".join(sorted(set(present))) or "none that names a platform"
    raise UserError(f"{what} has no image for platform {want}; present: {listed}; choose one with --platform")


# -- parsing helpers ----------------------------------------------------------------------------------

def _json_object(raw: bytes, what: str) -> dict:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):   # RecursionError: nested 10,000 deep
        raise UserError(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise UserError(f"{what} is not a JSON object")
    return doc


def _read_small(path: Path) -> bytes:
    """A layout's own small file (oci-layout, index.json), read no further than _SMALL."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_SMALL + 1)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > _SMALL:
        raise UserError(f"{path} is implausibly large (more than {_SMALL >> 20} MiB)")
    return raw


def _doc_kind(doc: dict, media_type: str | None) -> str:
    """'index' or 'manifest' from the media type (the document's, else its descriptor's), else from
    its shape (OCI lets both omit mediaType). Anything else: 'unknown'."""
    media_type = doc.get("mediaType") or media_type
    if media_type in INDEX_TYPES:
        return "index"
    if media_type in IMAGE_MANIFEST_TYPES:
        return "manifest"
    if media_type:
        return "unknown"
    if isinstance(doc.get("manifests"), list):
        return "index"
    if isinstance(doc.get("layers"), list) and isinstance(doc.get("config"), dict):
        return "manifest"
    return "unknown"


def _unknown_type(doc: dict, media_type: str | None, what: str) -> UserError:
    kind = doc.get("mediaType") or media_type or "(none)"
    return UserError(f"{what} has a manifest of unknown media type {str(kind)[:100]!r}; layerwise reads "
                     f"Docker v2 and OCI image manifests and indexes")


def _descriptor(d: object, what: str) -> tuple[str, int, str]:
    if not isinstance(d, dict):
        raise UserError(f"{what} holds a malformed descriptor")
    digest = check_digest(d.get("digest"), what)
    try:
        size = int(d.get("size", -1))
    except (TypeError, ValueError):
        size = -1
    if size < 0:
        raise UserError(f"{what} gives no valid size for {digest}")
    return digest, size, str(d.get("mediaType") or "")


def _manifest_parts(doc: dict, what: str) -> tuple[tuple[str, int, str], list[tuple[str, int, str]]]:
    """(config descriptor, layer descriptors) of an image manifest, media types checked."""
    config = doc.get("config")
    layers = doc.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise UserError(f"the manifest of {what} has no config or no layers list")
    config_d = _descriptor(config, f"the manifest of {what}")
    if config_d[2] and config_d[2] not in CONFIG_TYPES:
        raise UserError(f"{what} is not a container image: its config has media type {config_d[2][:100]!r}")
    layer_ds = [_descriptor(layer, f"the manifest of {what}") for layer in layers]
    for n, (digest, _, media_type) in enumerate(layer_ds):
        if media_type not in LAYER_TYPES:
            raise UserError(f"layer {n + 1}/{len(layer_ds)} ({digest}) of {what} has unknown media type "
                            f"{media_type[:100]!r}")
    return config_d, layer_ds


def _same_ref(a: str, b: str) -> bool:
    """Whether two names name the same image, as Docker reads names ('busybox' is
    'docker.io/library/busybox:latest'); a name that does not parse only equals itself."""
    if a == b:
        return True
    try:
        return Reference.parse(a) == Reference.parse(b)
    except UserError:
        return False


# -- where blobs live: a folder or a tar --------------------------------------------------------------

class _FileRange:
    """read(n) over `length` bytes of a file from `offset`: a member of a tar, read in place."""

    def __init__(self, path: Path, offset: int, length: int):
        self._file = open(path, "rb")
        self._file.seek(offset)
        self._left = length

    def read(self, n: int) -> bytes:
        n = min(n, self._left) if n >= 0 else self._left
        data = self._file.read(n) if n else b""
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._file.close()


class _Blobs(ABC):
    """Content-addressed blobs (blobs/<alg>/<hex>) of an OCI layout, in a folder or in a tar."""

    where: str

    @abstractmethod
    def size(self, digest: str) -> int | None:
        """Bytes stored under `digest`, or None when absent."""

    @abstractmethod
    def _source(self, digest: str):
        ...

    def open(self, digest: str, what: str, size: int | None = None) -> BinaryIO:
        return io.BufferedReader(VerifyingReader(self._source(digest), digest, what, size), 1 << 20)

    def read(self, digest: str, what: str, size: int | None = None) -> bytes:
        """A small blob (index, manifest, config), whole and verified; a UserError when absent."""
        check_digest(digest, what)
        stored = self.size(digest)
        if stored is None:
            raise UserError(f"{what} ({digest}) is missing from {self.where}")
        if stored > _SMALL:
            raise UserError(f"{what} ({digest}) in {self.where} is implausibly large ({stored} bytes)")
        with self.open(digest, what, size) as f:
            return f.read()


class _DirBlobs(_Blobs):
    def __init__(self, root: Path):
        self.root = root
        self.where = f"OCI layout {root}"

    def _path(self, digest: str) -> Path:
        algorithm, _, hex_ = check_digest(digest, self.where).partition(":")
        return self.root / "blobs" / algorithm / hex_

    def size(self, digest: str) -> int | None:
        path = self._path(digest)
        return path.stat().st_size if path.is_file() else None

    def _source(self, digest: str):
        return open(self._path(digest), "rb")


class _TarArchive:
    """The members of a tar, by name, with their data offsets: read in place, never extracted.
    Symbolic and hard links (Docker 20.10 links layers it already wrote) are followed within the tar."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                magic = f.read(6)
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror}") from None
        if magic.startswith((_GZIP_MAGIC, _ZSTD_MAGIC, b"BZh", b"\xfd7zXZ\x00")):
            raise UserError(f"{path} is a compressed archive; decompress it first (e.g. gunzip) — layerwise "
                            "reads `docker save` tars in place")
        self._members: dict[str, tarfile.TarInfo] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    self._members[self.normalize(member.name)] = member
        except (tarfile.TarError, EOFError) as e:
            raise UserError(f"{path} is not a readable tar archive ({e})") from None

    @staticmethod
    def normalize(name: str) -> str:
        while name.startswith("./"):
            name = name[2:]
        return name.rstrip("/")

    def names(self) -> list[str]:
        return list(self._members)

    def member(self, name: str) -> tarfile.TarInfo | None:
        """The regular file `name` stands for, links followed; None when absent or not a file."""
        member = self._members.get(self.normalize(name))
        for _ in range(16):
            if member is None or member.isreg():
                return member
            if member.issym():
                target = posixpath.normpath(posixpath.join(posixpath.dirname(self.normalize(member.name)),
                                                           member.linkname))
            elif member.islnk():
                target = posixpath.normpath(self.normalize(member.linkname))
            else:
                return None
            if target.startswith(("../", "/")) or target == "..":
                return None
            member = self._members.get(target)
        return None

    def open(self, member: tarfile.TarInfo) -> _FileRange:
        return _FileRange(self.path, member.offset_data, member.size)

    def read(self, name: str, what: str) -> bytes:
        member = self.member(name)
        if member is None:
            raise UserError(f"{what} ({name}) is missing from {self.path}")
        if member.size > _SMALL:
            raise UserError(f"{what} ({name}) in {self.path} is implausibly large ({member.size} bytes)")
        source = self.open(member)
        try:
            return source.read(member.size)
        finally:
            source.close()


class _TarBlobs(_Blobs):
    def __init__(self, archive: _TarArchive):
        self.archive = archive
        self.where = f"archive {archive.path}"

    def _member(self, digest: str) -> tarfile.TarInfo | None:
        algorithm, _, hex_ = check_digest(digest, self.where).partition(":")
        return self.archive.member(f"blobs/{algorithm}/{hex_}")

    def size(self, digest: str) -> int | None:
        member = self._member(digest)
        return member.size if member else None

    def _source(self, digest: str):
        member = self._member(digest)
        if member is None:
            raise UserError(f"blob {digest} is missing from {self.where}")
        return self.archive.open(member)


# -- OCI layouts (folders, and the form newer Docker's `docker save` writes) -------------------------

@dataclass(frozen=True)
class _Resolved:
    manifest_digest: str
    manifest_raw: bytes
    config_raw: bytes
    layers: list[tuple[str, int, str]]
    platform: str | None


def _candidate_names(descriptor: dict, extra: Callable[[dict], list[str]] | None) -> list[str]:
    annotations = descriptor.get("annotations") or {}
    names = [annotations[k] for k in (CONTAINERD_NAME, REF_NAME)
             if isinstance(annotations, dict) and isinstance(annotations.get(k), str)]
    return names + (extra(descriptor) if extra else [])


def _pick(candidates: list, names_of: Callable[[object], list[str]], select: str | None, platform: str | None,
          what: str, how: str, platform_of: Callable[[object], dict] | None = None):
    """One of several images: by name when `select` is given, the only one, or (an index of
    platforms) by platform. A UserError lists what is there otherwise."""
    if select is not None:
        chosen = [c for c in candidates if any(_same_ref(select, n) for n in names_of(c))]
    else:
        chosen = list(candidates)
    unique: dict[str, object] = {}     # one image under several names is one image
    for c in chosen:
        key = str(c.get("digest") or c.get("Config") or id(c)) if isinstance(c, dict) else str(id(c))
        unique.setdefault(key, c)
    chosen = list(unique.values())
    if len(chosen) == 1:
        return chosen[0]
    if len(chosen) > 1 and platform_of is not None \
            and all(_descriptor_platform(platform_of(c)) is not None for c in chosen):
        return select_platform(chosen, platform, what)
    listed = sorted({n for c in candidates for n in names_of(c)})
    present = ", ".join(listed[:20]) + (" …" if len(listed) > 20 else "") if listed else "none has a name"
    if not candidates:
        raise UserError(f"{what} holds no image")
    if select is not None and not chosen:
        raise UserError(f"{what} holds no image named {select!r}; present: {present}")
    raise UserError(f"{what} holds {len(chosen)} images{' named ' + repr(select) if select else ''}; "
                    f"choose one with {how} — present: {present}")


def _resolve_oci(blobs: _Blobs, index_raw: bytes, select: str | None, platform: str | None, what: str,
                 image: str, how: str, extra_names: Callable[[dict], list[str]] | None = None) -> _Resolved:
    """Walk an OCI layout's index.json to one image manifest; read its config; list its layers."""
    index = _json_object(index_raw, f"index.json of {what}")
    descriptors = index.get("manifests")
    if not isinstance(descriptors, list):
        raise UserError(f"index.json of {what} has no manifests list")
    descriptors = [d for d in descriptors if isinstance(d, dict)]
    descriptor = _pick(descriptors, lambda d: _candidate_names(d, extra_names), select, platform, what, how,
                       platform_of=lambda d: d)
    chosen_platform = None
    for _ in range(_MAX_NESTING):
        digest, size, media_type = _descriptor(descriptor, f"index of {what}")
        raw = blobs.read(digest, f"manifest of image {image}", size)
        doc = _json_object(raw, f"manifest {digest} of image {image}")
        kind = _doc_kind(doc, media_type)
        if kind == "unknown":
            raise _unknown_type(doc, media_type, f"image {image}")
        if kind == "index":
            nested = [d for d in doc.get("manifests") or [] if isinstance(d, dict)]
            descriptor = select_platform(nested, platform, f"image {image}")
            chosen_platform = str(_descriptor_platform(descriptor))
            continue
        (config_digest, config_size, _), layers = _manifest_parts(doc, f"image {image}")
        config_raw = blobs.read(config_digest, f"config of image {image}", config_size)
        for n, (layer_digest, _, _) in enumerate(layers):
            stored = blobs.size(layer_digest)
            if stored is None:
                raise UserError(f"layer {n + 1}/{len(layers)} ({layer_digest}) of image {image} is missing "
                                f"from {blobs.where}")
        return _Resolved(digest, raw, config_raw, layers, chosen_platform)
    raise UserError(f"the indexes of {what} nest deeper than {_MAX_NESTING} levels")


class OCILayoutImage(Image):
    """An image in an OCI image layout folder (oci-layout, index.json, blobs/<alg>/<hex>), chosen by
    its `org.opencontainers.image.ref.name` annotation (or the only one), then by platform inside
    nested indexes."""

    source = "oci-layout"

    def __init__(self, path: str | Path, ref: str | None = None, *, platform: str | None = None,
                 name: str | None = None):
        root = Path(path)
        name = name or (f"{root}:{ref}" if ref else str(root))
        if not (root / "oci-layout").is_file():
            raise UserError(f"{root} is not an OCI image layout (no oci-layout file)")
        layout = _json_object(_read_small(root / "oci-layout"), f"{root / 'oci-layout'}")
        if not str(layout.get("imageLayoutVersion", "")).startswith("1."):
            raise UserError(f"{root} is an OCI layout of unsupported version "
                            f"{str(layout.get('imageLayoutVersion'))[:20]!r}")
        index_path = root / "index.json"
        if not index_path.is_file():
            raise UserError(f"{root} is not an OCI image layout (no index.json)")
        self._blobs = _DirBlobs(root)
        resolved = _resolve_oci(self._blobs, _read_small(index_path), ref, platform,
                                f"OCI layout {root}", name, f"{root}:REF")
        super().__init__(name, resolved.manifest_digest, resolved.config_raw, resolved.layers, resolved.platform,
                         resolved.manifest_raw)

    def _open_layer(self, i: int, layer: LayerRef, what: str) -> BinaryIO:
        if self._blobs.size(layer.digest) is None:
            raise UserError(f"{what} is missing from {self._blobs.where}")
        return self._blobs.open(layer.digest, what, layer.size)


# -- docker save archives -----------------------------------------------------------------------------

_LEGACY_CONFIG = re.compile(r"^([a-f0-9]{64})\.json$")
_BLOB_PATH = re.compile(r"^blobs/(sha256|sha512)/([a-f0-9]+)$")


class DockerArchiveImage(Image):
    """One image of a `docker save` tar, read in place. Both forms: Docker 20.10's (manifest.json,
    <id>/layer.tar, <config>.json; layers are plain tars, so digest == diff_id) and the OCI layout
    newer Docker writes (index.json, blobs/sha256/…). `select` ('repo:tag') picks one image of
    several; alone in the tar, an image needs none."""

    source = "docker-archive"

    def __init__(self, path: str | Path, select: str | None = None, *, platform: str | None = None,
                 name: str | None = None):
        self.path = Path(path)
        name = name or (f"{self.path}:{select}" if select else str(self.path))
        archive = _TarArchive(self.path)
        self._archive = archive
        self._members: list[tarfile.TarInfo | None] = []
        entries = self._manifest_json(archive)
        if archive.member("index.json") is not None:
            resolved = self._oci(archive, entries, select, platform, name)
            self._members = [None] * len(resolved.layers)
            self._blobs: _TarBlobs | None = _TarBlobs(archive)
            super().__init__(name, resolved.manifest_digest, resolved.config_raw, resolved.layers,
                             resolved.platform, resolved.manifest_raw)
            return
        self._blobs = None
        if entries is None:
            raise UserError(f"{self.path} is not a `docker save` archive (neither manifest.json nor index.json)")
        entry = _pick(entries, lambda e: list(e.get("RepoTags") or []), select, platform,
                      f"archive {self.path}", f"{self.path}:REPO:TAG")
        config_path = entry.get("Config")
        layer_paths = entry.get("Layers")
        if not isinstance(config_path, str) or not isinstance(layer_paths, list):
            raise UserError(f"manifest.json of {self.path} is malformed (Config, Layers)")
        config_raw = archive.read(config_path, f"config of image {name}")
        config_digest = "sha256:" + hashlib.sha256(config_raw).hexdigest()
        named = _LEGACY_CONFIG.match(posixpath.basename(config_path))
        if named and named.group(1) != config_digest[7:]:
            raise DigestMismatch(f"config of image {name} ({config_path}) does not match its name "
                                 f"(got {config_digest}); the archive is corrupted")
        rootfs = _json_object(config_raw, f"the config of image {name}").get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_paths):
            raise UserError(f"image {name} in {self.path} is inconsistent: its config lists "
                            f"{len(diff_ids) if isinstance(diff_ids, list) else 'no'} diff_ids, manifest.json "
                            f"{len(layer_paths)} layers")
        layers = []
        for n, (layer_path, diff_id) in enumerate(zip(layer_paths, diff_ids, strict=True)):
            what = f"layer {n + 1}/{len(layer_paths)} ({layer_path}, diff_id {diff_id}) of image {name}"
            member = archive.member(str(layer_path))
            if member is None:
                raise UserError(f"{what} is missing from {self.path}; the archive is incomplete — "
                                "save the image again")
            self._members.append(member)
            layers.append(self._legacy_layer(member, str(layer_path), str(diff_id), what))
        super().__init__(name, None, config_raw, layers)

    def _manifest_json(self, archive: _TarArchive) -> list[dict] | None:
        if archive.member("manifest.json") is None:
            return None
        raw = archive.read("manifest.json", "manifest.json")
        try:
            entries = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise UserError(f"manifest.json of {self.path} is not valid JSON") from None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise UserError(f"manifest.json of {self.path} is not a list of images")
        return entries

    def _oci(self, archive: _TarArchive, entries: list[dict] | None, select: str | None,
             platform: str | None, name: str) -> _Resolved:
        blobs = _TarBlobs(archive)
        tags_by_config: dict[str, list[str]] = {}
        for entry in entries or []:
            match = _BLOB_PATH.match(_TarArchive.normalize(str(entry.get("Config", ""))))
            if match:
                tags_by_config.setdefault(f"{match.group(1)}:{match.group(2)}", []).extend(entry.get("RepoTags") or [])

        def repo_tags(descriptor: dict) -> list[str]:
            # manifest.json names images by config; reach the config through an image manifest.
            if not tags_by_config or descriptor.get("mediaType") in INDEX_TYPES:
                return []
            try:
                digest, size, _ = _descriptor(descriptor, "index.json")
                doc = _json_object(blobs.read(digest, "manifest", size), "manifest")
                return tags_by_config.get(str((doc.get("config") or {}).get("digest")), [])
            except UserError:
                return []

        return _resolve_oci(blobs, archive.read("index.json", "index.json"), select, platform,
                            f"archive {self.path}", name, f"{self.path}:REPO:TAG", repo_tags)

    def _legacy_layer(self, member: tarfile.TarInfo, layer_path: str, diff_id: str,
                      what: str) -> tuple[str, int, str]:
        """(digest, size, media type) of a layer file: plain tars are stored under their diff_id;
        a compressed one (hand-made archives) is hashed once here."""
        source = self._archive.open(member)
        try:
            magic = source.read(4)
        finally:
            source.close()
        if magic.startswith(_GZIP_MAGIC):
            media_type = OCI_LAYER_GZIP
        elif magic.startswith(_ZSTD_MAGIC):
            media_type = OCI_LAYER_ZSTD
        else:
            return check_digest(diff_id, what), member.size, OCI_LAYER
        match = _BLOB_PATH.match(_TarArchive.normalize(layer_path))
        if match:
            return f"{match.group(1)}:{match.group(2)}", member.size, media_type
        digest = hashlib.sha256()
        source = self._archive.open(member)
        try:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
        finally:
            source.close()
        return "sha256:" + digest.hexdigest(), member.size, media_type

    def _open_layer(self, i: int, layer: LayerRef, what: str) -> BinaryIO:
        if self._blobs is not None:
            if self._blobs.size(layer.digest) is None:
                raise UserError(f"{what} is missing from {self.path}")
            return self._blobs.open(layer.digest, what, layer.size)
        member = self._members[i]
        return io.BufferedReader(VerifyingReader(self._archive.open(member), layer.digest, what, layer.size),
                                 1 << 20)


# -- the local engine ---------------------------------------------------------------------------------

def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class EngineImage(DockerArchiveImage):
    """An image of the local Docker Engine, through the Engine API's `docker save` stream. The stream
    is spooled once to a temporary tar (as large as the image; $TMPDIR) and read in place from there;
    close() removes it. The engine's format decides the rest: Docker 20.10 gives plain-tar layers
    and no manifest digest."""

    source = "engine"

    def __init__(self, ref: str, *, engine=None, name: str | None = None):
        import docker.errors
        import requests.exceptions

        from .engine import Engine

        own = engine is None
        engine = engine or Engine()
        fd, path = tempfile.mkstemp(prefix="layerwise-engine-", suffix=".tar")
        self._finalizer = weakref.finalize(self, _unlink, path)
        try:
            if engine.inspect(ref) is None:
                raise UserError(f"image {ref} is not in the local Docker Engine; build or pull it first")
            try:
                with os.fdopen(fd, "wb") as out:
                    fd = -1
                    for chunk in engine.api.get_image(ref, chunk_size=1 << 20):
                        out.write(chunk)
            except docker.errors.APIError as e:
                raise UserError(f"the Docker Engine could not save image {ref}: {e.explanation}") from None
            except (requests.exceptions.RequestException, docker.errors.DockerException) as e:
                raise UserError(f"lost the Docker Engine while saving image {ref} ({type(e).__name__})") from None
            super().__init__(path, name=name or ref)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            self._finalizer()
            raise
        finally:
            if own:
                engine.close()

    def close(self) -> None:
        self._finalizer()

    def __getstate__(self) -> dict:
        # A copy sent to a worker process reads the same spool but never removes it: the owner does.
        return {k: v for k, v in self.__dict__.items() if k != "_finalizer"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._finalizer = lambda: None


# -- registries ---------------------------------------------------------------------------------------

class RegistryImage(Image):
    """An image in a registry, by tag or digest; under an image index, the manifest of `platform`
    (default linux/amd64). Layers stream from the registry, verified against their digests."""

    source = "registry"

    def __init__(self, ref: str, *, platform: str | None = None, registry: Registry | None = None,
                 name: str | None = None):
        name = name or ref
        parsed = Reference.parse(ref)
        host, repository, tag = parsed.registry, parsed.repository, parsed.reference
        self._own_registry = registry is None
        self._registry = registry or Registry(host)
        self._repository = repository
        try:
            manifest = self._registry.manifest(repository, tag)
            chosen_platform = None
            for _ in range(_MAX_NESTING):
                if not manifest.is_index:
                    break
                descriptor = select_platform(manifest.manifests, platform, f"image {name}")
                chosen_platform = str(_descriptor_platform(descriptor))
                manifest = self._registry.manifest(repository, check_digest(descriptor.get("digest"),
                                                                            f"the index of image {name}"))
            else:
                raise UserError(f"the indexes of image {name} nest deeper than {_MAX_NESTING} levels")
            (config_digest, config_size, _), layers = _manifest_parts(json.loads(manifest.raw), f"image {name}")
            if config_size > _SMALL:
                raise UserError(f"the config of image {name} is implausibly large ({config_size} bytes)")
            with self._registry.open_blob(repository, config_digest, size=config_size,
                                          what=f"config ({config_digest}) of image {name}") as f:
                config_raw = f.read()
            super().__init__(name, manifest.digest, config_raw, layers, chosen_platform, manifest.raw)
        except BaseException:
            self.close()
            raise

    def _open_layer(self, i: int, layer: LayerRef, what: str) -> BinaryIO:
        return self._registry.open_blob(self._repository, layer.digest, size=layer.size, what=what)

    def close(self) -> None:
        if self._own_registry:
            self._registry.close()

    def __getstate__(self) -> dict:
        # A copy sent to a worker process opens its own connection (and asks for its own tokens).
        state = {k: v for k, v in self.__dict__.items() if k != "_registry"}
        state["_host"] = self._registry.host
        return state

    def __setstate__(self, state: dict) -> None:
        host = state.pop("_host")
        self.__dict__.update(state)
        self._registry = Registry(host)
        self._own_registry = True


# -- one entry point ----------------------------------------------------------------------------------

def _split_local(spec: str) -> tuple[Path, str | None] | None:
    """'file.tar' or 'file.tar:repo:tag' (also 'layout-dir:ref') when the path part exists."""
    path = Path(spec).expanduser()
    if path.exists():
        return path, None
    for i, ch in enumerate(spec):
        if ch == ":" and i > 0:
            head = Path(spec[:i]).expanduser()
            if head.exists() and spec[i + 1:]:
                return head, spec[i + 1:]
    return None


def open_image(spec: str, platform: str | None = None) -> Image:
    """The image `spec` names, from the source its form says:
    - a folder holding `oci-layout` → OCI layout (`DIR:REF` picks by ref.name annotation);
    - a file → `docker save` archive (`FILE:REPO:TAG` picks one of several images);
    - `docker://REF` or `engine://REF` → the local Docker Engine;
    - otherwise a registry reference HOST[:PORT]/NAME[:TAG|@DIGEST].
    `platform` (os/arch[/variant], default linux/amd64) picks from image indexes."""
    parse_platform(platform)
    for scheme in ("docker://", "engine://"):
        if spec.startswith(scheme):
            ref = spec[len(scheme):]
            if not ref:
                raise UserError(f"{spec!r} names no image")
            return EngineImage(ref, name=spec)
    local = _split_local(spec)
    if local:
        path, select = local
        if path.is_dir():
            if not (path / "oci-layout").is_file():
                raise UserError(f"{path} is a folder but not an OCI image layout (no oci-layout file)")
            return OCILayoutImage(path, select, platform=platform, name=spec)
        if not path.is_file():   # a FIFO would block the first read; a device might never end
            raise UserError(f"{path} is neither a `docker save` archive file nor an OCI layout folder")
        return DockerArchiveImage(path, select, platform=platform, name=spec)
    if spec.startswith(("/", "./", "../", "~")) or spec.endswith((".tar", ".tar.gz", ".tgz")):
        raise UserError(f"{spec}: no such file or folder")
    return RegistryImage(spec, platform=platform)
