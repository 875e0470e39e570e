"""A build context with hostile names and links, built for real (engine and registry): what the plan
digested is what the image holds, names with newlines and bytes that are not UTF-8 included."""

from __future__ import annotations

import os
import tarfile

import pytest

from conftest import REGISTRY, run_cli
from layerwise.oci.images import open_image

STACK = """\
registry: {registry}
project: {ns}
base: {registry}/os/busybox:latest
categories:
  - {{name: code, owner: app-team}}
apps:
  a: {{code: "COPY ctx/ /x/"}}
  b: {{code: RUN echo b > /b}}
"""


def _names(ref: str) -> dict[bytes, tarfile.TarInfo]:
    """Entries of the image's top layer, by raw name."""
    with open_image(ref) as img, img.open_layer(len(img.layers) - 1) as blob:
        with tarfile.open(fileobj=blob, mode="r|*", encoding="utf-8", errors="surrogateescape") as tar:
            return {os.fsencode(m.name): m for m in tar}


@pytest.mark.parametrize("builder", ["buildkit", "legacy"])
def test_a_context_with_hostile_names_and_links_builds_as_planned(services, namespace, tmp_path, builder):
    ctx = os.fsencode(tmp_path / "ctx")
    os.makedirs(os.path.join(ctx, b"sub"))
    for name, data in ((b"new\nline", b"1"), (b"caf\xe9", b"2"), (b"sub/plain", b"3")):
        with open(os.path.join(ctx, name), "wb") as f:
            f.write(data)
    os.symlink(b"loop", os.path.join(ctx, b"loop"))
    os.symlink(b"..", os.path.join(ctx, b"sub", b"up"))
    (tmp_path / "layerwise.yaml").write_text(STACK.format(registry=REGISTRY, ns=namespace))

    result = run_cli("build", str(tmp_path / "layerwise.yaml"), "--push", "--builder", builder)
    assert result.returncode == 0, result.stderr + result.stdout
    names = _names(f"{REGISTRY}/{namespace}/a:latest")
    for name in (b"x/new\nline", b"x/caf\xe9", b"x/sub/plain"):
        assert names[name].isreg(), sorted(names)
    assert names[b"x/loop"].issym() and names[b"x/loop"].linkname == "loop"
    assert names[b"x/sub/up"].issym() and names[b"x/sub/up"].linkname == ".."

    # The rerun finds both images by their fingerprints: the digest of such a context is stable.
    again = run_cli("build", str(tmp_path / "layerwise.yaml"), "--push", "--dry-run")
    assert again.returncode == 0, again.stderr
    assert [line.split()[0] for line in again.stdout.splitlines() if line.strip()] == ["skip", "skip"], again.stdout
