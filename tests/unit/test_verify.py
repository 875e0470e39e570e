"""`layerwise verify`: `compare` by hand, then real builds of originals and refactorings on busybox."""
import json

import pytest

from conftest import verify_cli, write_file
from layerwise.dockerfiles import image_references
from layerwise.importing.verify import Difference, FileFacts, ImageFacts, compare, config_subset, facts_from, image_tag
from layerwise.oci.layerindex import DIR, FILE, OPAQUE, SYMLINK, WHITEOUT, Entry, LayerIndex

BUSYBOX = "localhost:5000/os/busybox:latest"


def facts(files=None, **config):
    base = {"Env": {"PATH": "/bin"}, "Cmd": ["sh"], "Entrypoint": None, "WorkingDir": None, "User": None,
            "ExposedPorts": [], "Labels": {}}
    return ImageFacts(dict(files or {}), base | config)


def f(sha="a" * 64, mode=0o644, type=FILE, uid=0, gid=0, link=None):
    return FileFacts(type, mode, uid, gid, sha if type == FILE else None, link)


def test_compare_equal_images_gives_nothing():
    files = {"srv": f(type=DIR, mode=0o755), "srv/app.txt": f(), "bin/ls": f(type=SYMLINK, mode=0o777, link="busybox")}
    assert compare(facts(files), facts(dict(files))) == []


def test_compare_names_missing_extra_and_every_changed_field():
    original = facts({"srv/a": f(), "srv/b": f(), "srv/c": f(mode=0o755), "srv/l": f(type=SYMLINK, link="a"),
                      "srv/d": f(uid=0, gid=0)})
    refactored = facts({"srv/b": f(sha="b" * 64), "srv/c": f(mode=0o600), "srv/l": f(type=SYMLINK, link="b"),
                        "srv/d": f(uid=1000, gid=1000), "srv/new": f()})
    assert compare(original, refactored) == [
        Difference("missing", "/srv/a", original=FILE),
        Difference("changed", "/srv/b", "sha256", "a" * 64, "b" * 64),
        Difference("changed", "/srv/c", "mode", 0o755, 0o600),
        Difference("changed", "/srv/d", "uid", 0, 1000),
        Difference("changed", "/srv/d", "gid", 0, 1000),
        Difference("changed", "/srv/l", "link", "a", "b"),
        Difference("extra", "/srv/new", refactored=FILE),
    ]
    mode = compare(original, refactored)[2]
    assert mode.to_dict()["original"] == "0755" and str(mode) == "/srv/c: mode 0755 → 0600"
    assert str(compare(original, refactored)[1]) == "/srv/b: sha256 aaaaaaaaaaaa → bbbbbbbbbbbb"


def test_compare_a_file_that_became_a_directory():
    diffs = compare(facts({"etc/app": f()}), facts({"etc/app": f(type=DIR, mode=0o755)}))
    assert [(d.field, d.original, d.refactored) for d in diffs] == [
        ("type", FILE, DIR), ("mode", 0o644, 0o755), ("sha256", "a" * 64, None)]


def test_compare_config_names_each_env_and_label_entry_and_each_key():
    original = facts(Env={"PATH": "/bin", "A": "1"}, Labels={"team": "x"}, Cmd=["cat", "/srv/a"], User="app")
    refactored = facts(Env={"PATH": "/bin"}, Labels={"team": "y", "extra": "z"}, Cmd=["cat", "/srv/b"],
                       User=None)
    assert compare(original, refactored) == [
        Difference("config", "Cmd", original=["cat", "/srv/a"], refactored=["cat", "/srv/b"]),
        Difference("config", "Env:A", original="1", refactored=None),
        Difference("config", "Labels:extra", original=None, refactored="z"),
        Difference("config", "Labels:team", original="x", refactored="y"),
        Difference("config", "User", original="app", refactored=None),
    ]


def test_config_subset_drops_layerwise_labels_and_reads_by_meaning():
    config = {"config": {"Env": ["B=2", "A=1"], "Cmd": ["sh"], "WorkingDir": "", "User": "",
                         "ExposedPorts": {"80/tcp": {}, "443/tcp": {}}, "Hostname": "abc123",
                         "Labels": {"io.layerwise.fingerprint": "f", "org.opencontainers.image.base.name": "n",
                                    "org.opencontainers.image.base.digest": "d", "team": "x"}}}
    subset = config_subset(config)
    assert subset["Labels"] == {"team": "x"}
    assert subset["ExposedPorts"] == ["443/tcp", "80/tcp"]
    assert subset["WorkingDir"] is None and subset["User"] is None and "Hostname" not in subset
    # ENV order is no difference to a process; a value is.
    reordered = {"config": dict(config["config"], Env=["A=1", "B=2"], Labels={"team": "x"})}
    assert compare(ImageFacts({}, subset), ImageFacts({}, config_subset(reordered))) == []
    changed = {"config": dict(config["config"], Env=["A=1", "B=3"])}
    assert [d.where for d in compare(ImageFacts({}, subset), ImageFacts({}, config_subset(changed)))] == ["Env:B"]


def layer(n, *entries):
    diff_id = "sha256:" + str(n) * 64
    return LayerIndex(diff_id, diff_id, 0, 0, tuple(Entry(*e) for e in entries))


def test_facts_apply_whiteouts_and_opaque_directories_and_keep_the_top_entry():
    lower = layer(1, ("etc", DIR, 0o755, 0, 0, 0, None, None), ("etc/old", FILE, 0o644, 0, 0, 1, "1" * 64, None),
                  ("var/cache", DIR, 0o755, 0, 0, 0, None, None),
                  ("var/cache/x", FILE, 0o644, 0, 0, 1, "2" * 64, None),
                  ("srv/app", FILE, 0o644, 0, 0, 1, "3" * 64, None))
    upper = layer(2, ("etc/old", WHITEOUT, 0, 0, 0, 0, None, None), ("var/cache", OPAQUE, 0, 0, 0, 0, None, None),
                  ("srv/app", FILE, 0o755, 0, 0, 1, "4" * 64, None))
    files = facts_from([lower, upper], {"config": {}}).files
    assert "etc/old" not in files and "var/cache/x" not in files and "var/cache" in files
    assert files["srv/app"] == FileFacts(FILE, 0o755, 0, 0, "4" * 64, None)


def test_image_references_follow_arg_defaults_and_skip_stages():
    text = (f'ARG BASE="{BUSYBOX}"\nFROM ${{BASE}} AS Build\nFROM ${{OTHER:-localhost:5000/x/y:1}}\n'
            "COPY --from=build /a /b\nCOPY --from=0 /a /b\nCOPY --from=localhost:5000/z:2 /a /b\n"
            "FROM scratch\nFROM build\n")
    assert image_references(text) == [BUSYBOX, "localhost:5000/x/y:1", "localhost:5000/z:2"]


def test_image_tags_are_valid_repository_names():
    assert image_tag("Ad_Service v2", "original") == "layerwise-verify/ad_service-v2:original"


@pytest.mark.parametrize("doc, message", [
    (None, "holds no import.json"),
    ("{not json", "import.json:1: not valid JSON"),
    ({"schema": "other/v1", "bases": [], "apps": []}, "\"schema\" must be 'layerwise.import/v1'"),
    ({"schema": "layerwise.import/v1", "bases": [], "apps": [
        {"name": "a", "original": "/x/Dockerfile", "context": None, "dockerfile": "apps/a/Dockerfile",
         "bases": ["nope"]}]}, "app 'a' uses base 'nope', which is not listed"),
    ({"schema": "layerwise.import/v1", "bases": [
        {"name": "b", "ref": "localhost:5000/b:1", "dockerfile": "bases/b/Dockerfile", "context": None,
         "parent": "later"}], "apps": []}, "its parent 'later' is not a base listed before it"),
    ({"schema": "layerwise.import/v1", "bases": [], "apps": [{"name": "a"}]}, "apps[0]: \"original\" must be"),
])
def test_bad_import_description_is_one_clear_line(tmp_path, doc, message):
    if doc is not None:
        write_file(tmp_path / "import.json", doc if isinstance(doc, str) else json.dumps(doc))
    result = verify_cli("--against", tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("layerwise: error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_an_original_not_in_import_json_is_bad_input(tmp_path):
    original = write_file(tmp_path / "src" / "a" / "Dockerfile", f"FROM {BUSYBOX}\n")
    stray = write_file(tmp_path / "elsewhere" / "Dockerfile", f"FROM {BUSYBOX}\n")
    write_file(tmp_path / "out" / "import.json", json.dumps({"schema": "layerwise.import/v1", "bases": [], "apps": [
        {"name": "a", "original": str(original), "context": str(original.parent),
         "dockerfile": "apps/a/Dockerfile", "bases": []}]}))
    for given, message in ((stray, "is the original of no app in"), (tmp_path / "missing", "no such file")):
        result = verify_cli(given, "--against", tmp_path / "out")
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
