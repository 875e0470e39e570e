"""`layerwise audit` findings: by hand on small layer sets, and for real on a flat vs a layered family."""
import json

import pytest

from conftest import run_cli
from layerwise.measure.audit import AuditedImage, cold_pull, recompressed, same_files, sharing_matrix
from layerwise.oci.images import LayerRef
from layerwise.oci.layerindex import Entry, LayerIndex


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
    # Both host kinds pull the recompressed base again: the Docker Engine knows a layer by its blob
    # digest before it has it, so another digest is another chain (cost.py's chain rule).
    assert cold_pull([a, b, c]) == {"docker": 100 + 50 + 5 + 60 + 7 + 90, "containerd": 100 + 50 + 5 + 60 + 7 + 90,
                                    "floor": 90 + 50 + 5 + 7}
    # A blob a host holds under another parent: containerd reuses it, the Docker Engine does not.
    d = image("d", recompressed_base, tools_a)
    assert cold_pull([a, d]) == {"docker": 100 + 50 + 5 + 90 + 50, "containerd": 100 + 50 + 5 + 90,
                                 "floor": 90 + 50 + 5}


def test_audit_reports_a_bad_image_and_goes_on(tmp_path):
    (tmp_path / "broken.tar").write_bytes(b"not a tar at all")
    result = run_cli("audit", str(tmp_path / "broken.tar"), "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    doc = json.loads(result.stdout)
    assert doc["images"][0]["error"]


def test_recommended_tree_by_hand():
    from layerwise.measure.audit import recommended_tree
    os_ = layer("os", {"bin/sh": "a"}, 100)
    os_recompressed = (LayerRef(digest="sha256:" + "9" * 64, diff_id=os_[0].diff_id, size=90,
                                media_type=os_[0].media_type), os_[1])
    tools_a, tools_b = layer("toolsa", {"opt/t": "b"}, 50), layer("toolsb", {"opt/t": "b"}, 60)  # same files
    tools_d = layer("toolsd", {"opt/u": "e"}, 30)
    code = {n: layer(f"code{n}", {f"srv/{n}": n}, size) for n, size in (("a", 5), ("b", 7), ("c", 9), ("d", 3))}
    a = image("a", os_, tools_a, code["a"])
    b = image("b", os_, tools_b, code["b"])              # the tools built again: other digests
    c = image("c", os_recompressed, tools_a, code["c"])  # the OS pushed recompressed, a's tools blob on it
    d = image("d", os_, tools_d, code["d"])              # other tools
    for img in (a, b, c, d):
        img.made_by = ["", "COPY dir:x in /opt/", f"RUN make {img.name}"]
    tree = recommended_tree([a, b, c, d])
    # The OS (same files in all four) is one base; the equal COPY in a, b, c a second one on it.
    # Tree nodes, each built once (sizes of the first image): os 100, tools 50, code 5 7 9, tools_d 30, code_d 3.
    assert [(x["layers"], x["bytes"], x["used_by"], x["from_layer"]) for x in tree["bases"]] == [
        (1, 100, ["a", "b", "c", "d"], 1), (1, 50, ["a", "b", "c"], 2)]
    # Cold pull today. Docker Engine, chains of blobs: a 100+50+5; b 60+7 (the OS is held); c on the
    # recompressed OS: 90+50+9; d 30+3. containerd, blobs: the same but a's tools blob once.
    # With the tree: every node once, 204, by either rule.
    assert tree["cold_pull_by_host"] == {"docker": {"today": 404, "tree": 204},
                                         "containerd": {"today": 404 - 50, "tree": 204}}
    assert tree["cold_pull"] == 204                  # the tree's, Docker Engine: as before
    # The OS changes. Today every layer of every image is rebuilt, the OS layer a, b, d share once:
    # 404 by either rule. With the tree: every node once (204) on the Docker Engine; containerd keeps
    # the COPY layers' blobs (reproducible, their files did not change): 204 - 50 - 30.
    assert tree["bases"][0]["update"] == {"docker": {"today": 404, "tree": 204},
                                          "containerd": {"today": 404, "tree": 124}}
    # The tools change (the second layer up, in a, b, c). Today: a 50+5, b 60+7, c 50+9 (c's tools
    # layer sits on another chain than a's, so it is rebuilt apart); with the tree 50 once + 5+7+9.
    assert tree["bases"][1]["update"] == {"docker": {"today": 181, "tree": 71},
                                          "containerd": {"today": 181, "tree": 71}}


def test_tree_savings_and_problems_are_rendered():
    """The terminal tables, the HTML and the stderr lines show the tree's savings, the images that
    failed and the entries not indexed, names as written (never read as markup)."""
    import dataclasses
    import io

    from rich.console import Console

    from layerwise.cli.report import audit_html, audit_messages, audit_tables
    from layerwise.measure.audit import findings
    base = layer("base", {"bin/sh": "a"}, 100)
    tools_a, tools_b = layer("toolsa", {"opt/t": "b"}, 50), layer("toolsb", {"opt/t": "b"}, 60)
    evil, evil_index = layer("evil", {"ok": "e"}, 9)
    evil_index = dataclasses.replace(evil_index, problems=("'../x' escapes the layer root: not indexed",))
    a = image("a", base, tools_a, layer("codea", {"srv/a": "c"}, 5))
    b = image("b", base, tools_b, layer("codeb", {"srv/b": "d"}, 7))
    a.made_by, b.made_by = (["", "COPY dir:x in /opt/", f"RUN make {n}"] for n in "ab")
    c = image("c[bold]", base, (evil, evil_index))
    broken = AuditedImage("d", error="layer 1/1 (sha256:0) of image d: gzip stream is truncated")
    doc = findings([a, b, c, broken])
    # Tree nodes: base 100, tools 50 (a's), code 5 and 7, evil 9 = 171; today 100+50+5+60+7+9 = 231.
    # The base changes: today all 231; the tree 171, and containerd keeps the tools COPY's blob: 121.
    # The tools change (layer 2 up of a and b): today 50+5+60+7 = 122, the tree 50+5+7 = 62.
    tree = doc["recommended_tree"]
    assert [(x["used_by"], x["update"]) for x in tree["bases"]] == [
        (["a", "b", "c[bold]"], {"docker": {"today": 231, "tree": 171}, "containerd": {"today": 231, "tree": 121}}),
        (["a", "b"], {"docker": {"today": 122, "tree": 62}, "containerd": {"today": 122, "tree": 62}})]
    assert doc["images"][2]["problems"] == [{"layer": 2, "digest": evil.digest,
                                             "problem": "'../x' escapes the layer root: not indexed"}]
    assert audit_messages(doc) == [
        f"layerwise: warning: layer 2/2 ({evil.digest}) of image c[bold]: '../x' escapes the layer root: not indexed",
        "layerwise: error: layer 1/1 (sha256:0) of image d: gzip stream is truncated"]
    out = Console(file=io.StringIO(), width=250, color_system=None)
    for part in audit_tables(doc):
        out.print(part)
    text = out.file.getvalue()
    for shown in ("231 B → 171 B", "231 B → 121 B", "122 B → 62 B", "c[bold]", "'../x' escapes the layer root",
                  "gzip stream is truncated"):
        assert shown in text, shown
    assert [line.split("│")[1:5] for line in text.splitlines() if line.startswith("│ Docker Engine")] == [
        [" Docker Engine ", "       231 B ", "            171 B ", "  60 B "]]
    page = audit_html(doc)
    for shown in ("231 B → 171 B", "231 B → 121 B", "122 B → 62 B", "c[bold]", "&#x27;../x&#x27; escapes",
                  "gzip stream is truncated", "cold pull of a host holding all images"):
        assert shown in page, shown


def test_fail_under_gates():
    from layerwise.errors import UserError
    from layerwise.measure.audit import check_gates, parse_gates
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
    from layerwise.measure.audit import duplicated_files, near_identical
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


def test_audit_refuses_an_html_path_in_no_folder(tmp_path):
    result = run_cli("audit", str(tmp_path / "whatever.tar"), "--html", str(tmp_path / "no" / "a.html"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"layerwise: error: --html {tmp_path / 'no' / 'a.html'}: the folder " \
                                    f"{tmp_path / 'no'} does not exist"
