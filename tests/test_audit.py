"""`layerwise audit` findings: by hand on small layer sets, and for real on a flat vs a layered family."""

import json
import os

import pytest

from layerwise.audit import AuditedImage, cold_pull, recompressed, same_files, sharing_matrix
from layerwise.images import LayerRef
from layerwise.layerindex import Entry, LayerIndex

from conftest import run_cli


def layer(name: str, files: dict[str, str], size: int, digest: str | None = None):
    entries = tuple(Entry(path=p, type="file", mode=0o644, uid=0, gid=0, size=len(c), sha256=c * 8, link="")
                    for p, c in sorted(files.items()))
    diff_id = "sha256:" + name.ljust(64, "0")
    index = LayerIndex(diff_id=diff_id, digest=digest or diff_id, compressed_size=size,
                       size=size, entries=entries, problems=(), compression="gzip")
    return LayerRef(digest=digest or ("sha256:" + name.ljust(64, "1")), diff_id=diff_id, size=size,
                    media_type="application/vnd.docker.image.rootfs.diff.tar.gzip"), index


def image(name, *layers):
    return AuditedImage(name, [l for l, _ in layers], [i for _, i in layers])


def test_findings_by_hand():
    base = layer("base", {"bin/sh": "a"}, 100)
    tools_a = layer("toolsa", {"opt/t": "b"}, 50)          # the same files built twice:
    tools_b = layer("toolsb", {"opt/t": "b"}, 60)          # other diff_ids, a host pulls both
    code_a, code_b = layer("codea", {"srv/a": "c"}, 5), layer("codeb", {"srv/b": "d"}, 7)
    recompressed_base = (LayerRef(digest="sha256:" + "9" * 64, diff_id=base[0].diff_id, size=90,
                                  media_type=base[0].media_type), base[1])
    a = image("a", base, tools_a, code_a)
    b = image("b", base, tools_b, code_b)
    c = image("c", recompressed_base)
    assert sharing_matrix([a, b]) == [{"a": "a", "b": "b", "layers": 1, "bytes": 100}]
    dup = same_files([a, b])
    assert len(dup) == 1 and dup[0]["extra_bytes"] == 60 and dup[0]["images"] == ["a", "b"]
    rec = recompressed([a, c])
    assert rec == [{"diff_id": base[0].diff_id, "digests": sorted([base[0].digest, "sha256:" + "9" * 64]),
                    "extra_bytes": 100}]   # a host pulls both where the 90-byte one would do
    # Docker Engine: same diff_id chain → reused even when recompressed; containerd: every blob.
    assert cold_pull([a, b, c]) == {"docker": 100 + 50 + 5 + 60 + 7, "containerd": 100 + 50 + 5 + 60 + 7 + 90,
                                    "floor": 90 + 50 + 5 + 7}



STACK = """\
registry: localhost:5000
project: {ns}
base: localhost:5000/os/busybox:latest
categories:
  - {{name: tools, owner: platform}}
  - {{name: code, owner: apps}}
apps:
  app1: {{tools: COPY tools/ /opt/tools/, code: COPY code1/ /srv/}}
  app2: {{tools: COPY tools/ /opt/tools/, code: COPY code2/ /srv/}}
"""


@pytest.mark.integration
def test_audit_flat_vs_layered_family(services, namespace, tmp_path):
    from layerwise.bench import build_flat
    from layerwise.build import build_family
    from layerwise.spec import load_stack

    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "big.bin").write_bytes(os.urandom(1_000_000))
    for n in (1, 2):
        (tmp_path / f"code{n}").mkdir()
        (tmp_path / f"code{n}" / "app.txt").write_text(f"app {n}\n")
    (tmp_path / "layerwise.yaml").write_text(STACK.format(ns=namespace))
    stack = load_stack(tmp_path / "layerwise.yaml")
    plan, _, _ = build_family(stack, push=True)
    flat = build_flat(stack, plan, lambda line: None)
    layered = [plan.image(plan.apps[a]).ref for a in ("app1", "app2")]

    result = run_cli("audit", *flat.values(), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    dup = doc["same_files_other_digests"]
    # The flat apps' tools layers hold the same 1 MB of files under other diff_ids: pulled twice.
    assert any(g["file_bytes"] >= 1_000_000 and g["extra_bytes"] > 900_000 for g in dup), dup
    assert doc["sharing"][0]["layers"] == 1            # only the OS base is shared
    # The planner, fed these layers, finds the shared base (OS + tools) the flat apps should have.
    tree = doc["recommended_tree"]
    assert [(b["layers"], len(b["used_by"])) for b in tree["bases"]] == [(2, 2)]
    assert tree["cold_pull"] < doc["cold_pull"]["docker"] - 900_000

    # CI gating: the flat family shares too little; the layered one passes; both write HTML.
    gated = run_cli("audit", *flat.values(), "--fail-under", "sharing=0.3", "--html", str(tmp_path / "a.html"))
    assert gated.returncode == 1 and "sharing is" in gated.stdout
    assert "<table>" in (tmp_path / "a.html").read_text()

    result = run_cli("audit", *layered, "--json", "--fail-under", "sharing=30%", "--html", str(tmp_path / "b.html"))
    assert result.returncode == 0, result.stdout[-2000:]
    doc = json.loads(result.stdout)
    assert doc["same_files_other_digests"] == [] and doc["recompressed"] == []
    assert doc["sharing"][0]["layers"] == 2             # the OS base and the tools image
    assert doc["cold_pull"]["docker"] == doc["cold_pull"]["floor"]


def test_audit_reports_a_bad_image_and_goes_on(tmp_path):
    (tmp_path / "broken.tar").write_bytes(b"not a tar at all")
    result = run_cli("audit", str(tmp_path / "broken.tar"), "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    doc = json.loads(result.stdout)
    assert doc["images"][0]["error"]


def test_recommended_tree_by_hand():
    from layerwise.audit import recommended_tree
    base = layer("base", {"bin/sh": "a"}, 100)
    tools_a, tools_b = layer("toolsa", {"opt/t": "b"}, 50), layer("toolsb", {"opt/t": "b"}, 60)
    code_a, code_b = layer("codea", {"srv/a": "c"}, 5), layer("codeb", {"srv/b": "d"}, 7)
    a = image("a", base, tools_a, code_a)
    b = image("b", base, tools_b, code_b)
    a.made_by = b.made_by = ["", "COPY dir:x in /opt/", ""]
    tree = recommended_tree([a, b])
    # Base and the equal COPY become one shared image; each app keeps its code layer.
    assert tree["bases"] == [{"layers": 2, "bytes": 150, "used_by": ["a", "b"]}]
    assert tree["cold_pull"] == 100 + 50 + 5 + 7


def test_fail_under_gates():
    from layerwise.audit import check_gates, parse_gates
    from layerwise.errors import UserError
    doc = {"images": [{"name": "a", "bytes": 100, "error": None, "efficiency": {"score": 0.8, "wasted_bytes": 5}},
                      {"name": "b", "bytes": 100, "error": None, "efficiency": {"score": 0.99, "wasted_bytes": 0}}],
           "cold_pull": {"docker": 150}}
    assert parse_gates(["efficiency=90%", "sharing=0.2"]) == {"efficiency": 0.9, "sharing": 0.2}
    failed = check_gates(doc, {"efficiency": 0.9, "sharing": 0.3})
    assert failed == ["efficiency of a is 80.0%, under 90.0%", "sharing is 25.0%, under 30.0%"]
    assert check_gates(doc, {"efficiency": 0.5, "sharing": 0.25}) == []
    for bad in ("speed=1", "sharing=lots", "sharing=2"):
        with pytest.raises(UserError):
            parse_gates([bad])


def test_near_identical_and_duplicated_files_by_hand():
    from layerwise.audit import duplicated_files, near_identical
    base = layer("base", {"bin/sh": "a"}, 100)
    # The same step built twice: 3 files equal, one (a timestamped .pyc) differs.
    run_a = layer("runa", {"lib/x.so": "s" * 90, "lib/y.so": "t" * 5, "lib/z.pyc": "p1"}, 40)
    run_b = layer("runb", {"lib/x.so": "s" * 90, "lib/y.so": "t" * 5, "lib/z.pyc": "p2"}, 41)
    a, b = image("a", base, run_a), image("b", base, run_b)
    near = near_identical([a, b])
    assert len(near) == 1
    assert near[0]["differing_files"] == 1 and near[0]["examples"] == ["lib/z.pyc"]
    assert near[0]["same_bytes"] == 95 and near[0]["extra_bytes"] == 40
    dup = duplicated_files([a, b])
    # x.so and y.so are in both images but in layers they do not share; bin/sh is in the shared base.
    assert dup == [{"directory": "lib", "files": 2, "extra_bytes": 95, "images": ["a", "b"]}]
