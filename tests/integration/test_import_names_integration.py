"""Issue 14 on the real engine: a family whose LABEL and USER stand in other places, one app that
is the others' shared prefix. Import moves the steps that do not cut the prefix, names the bases
from what they hold, writes no alias image; `verify --no-cache` proves every rewritten image equal
(files and config) to its original, and the folder builds and pushes as a family."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

pytestmark = pytest.mark.integration

BASE = "localhost:5000/os/busybox:latest"
SHARED_RUN = "RUN mkdir -p /opt/shared && echo shared > /opt/shared/f && chmod 0750 /opt/shared\n"
APPS = {
    # The LABEL above the shared RUN here, below it in b; USER above the shared COPY here, below it in b.
    "a/Dockerfile": (f"FROM {BASE}\nLABEL maintainer=team@example.com\n{SHARED_RUN}USER 1000\n"
                     "COPY lib/ /opt/lib/\nEXPOSE 8080\nRUN echo a > /tmp/a\nCMD [\"cat\", \"/tmp/a\"]\n"),
    "b/Dockerfile": (f"FROM {BASE}\n{SHARED_RUN}LABEL maintainer=team@example.com\nCOPY lib/ /opt/lib/\n"
                     "USER 1000\nWORKDIR /tmp\nRUN echo b > /tmp/b\n"),
    # The foundation every other app starts with: it is the base, not an app on top of one.
    "foundation/Dockerfile": f"FROM {BASE}\nLABEL maintainer=team@example.com\n{SHARED_RUN}COPY lib/ /opt/lib/\n",
}


def write_apps(root):
    files = dict(APPS)
    for app in ("a", "b", "foundation"):
        files[f"{app}/lib/util.sh"] = "echo util\n"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_moved_steps_and_an_app_that_is_a_base_verify_and_build(services, namespace, tmp_path):
    src = write_apps(tmp_path / "src")
    out = tmp_path / "family"
    project = f"import-names-{namespace}"
    r = run_cli("import", str(src), "--refactor-to", str(out), "--project", project, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (base,) = doc["bases"]
    assert base["name"] == f"{project}/foundation" and base["app"] == "foundation"
    assert base["used_by"] == ["a", "b", "foundation"] and base["layers"] == 2
    apps = {a["name"]: a for a in doc["apps"]}
    assert apps["foundation"]["image"] == base["name"] and not (out / "apps/foundation").exists()
    # The base is written in the order two of its three users wrote it (LABEL first): b's LABEL
    # moves up to it, and a's USER moves down past the shared COPY.
    moved = {(name, m["instruction"], m["direction"]) for name, a in apps.items() for m in a["moves"]}
    assert moved == {("a", "USER 1000", "down"), ("b", "LABEL maintainer=team@example.com", "up")}

    r = run_cli("verify", str(src), "--against", str(out), "--no-cache", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    results = {a["app"]: a for a in json.loads(r.stdout)["apps"]}
    assert set(results) == {"a", "b", "foundation"}
    assert all(a["equivalent"] and not a["differences"] for a in results.values()), results

    # Built as a family: the base (which is the app foundation) and the two apps on it; three images.
    r = run_cli("build", str(out), "--push", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    built = json.loads(r.stdout)
    assert built["counts"]["built"] == 3
    assert sorted(i["key"] for i in built["images"]) == [f"{project}/a", f"{project}/b", f"{project}/foundation"]


def _copies(root, first: str, second: str, link: bool) -> None:
    """Three apps copying two folders after a shared RUN; b in the other order. With `link`,
    /opt/y is a symlink to /opt/x and both folders hold f.txt: then the order decides which f.txt
    stays, and the swap must not be applied."""
    setup = "RUN mkdir -p /opt/x" + (" && ln -s /opt/x /opt/y" if link else " /opt/y") + "\n"
    for app in ("a", "b", "c"):
        order = (second, first) if app == "b" else (first, second)
        text = f"FROM {BASE}\n{setup}" + "".join(order) + f"RUN echo {app} > /{app}.txt\n"
        (root / app / "x").mkdir(parents=True)
        (root / app / "y").mkdir()
        (root / app / "Dockerfile").write_text(text)
        (root / app / "x/f.txt").write_text("from x\n")
        (root / app / "y/f.txt").write_text("from y\n")


@pytest.mark.parametrize("link", [False, True], ids=["unrelated-paths", "same-folder-through-a-symlink"])
def test_reorder_is_kept_only_when_verify_proves_it(services, namespace, tmp_path, link):
    src = tmp_path / "src"
    _copies(src, "COPY x/ /opt/x/\n", "COPY y/ /opt/y/\n", link)
    out = tmp_path / "family"
    r = run_cli("import", str(src), "--refactor-to", str(out), "--project", f"import-names-{namespace}",
                "--reorder", "--json")
    doc = json.loads(r.stdout)
    if not link:
        assert r.returncode == 0, r.stdout + r.stderr
        (swap,) = doc["applied_swaps"]
        assert swap["apps"] == ["b"] and swap["order"] == ["COPY x/ /opt/x/", "COPY y/ /opt/y/"]
        assert doc["bases"][0]["layers"] == 3 and doc["reorder_note"] is None
        moved = {m["instruction"]: m["direction"] for a in doc["apps"] for m in a["moves"]}
        assert moved == {"COPY x/ /opt/x/": "swapped"}
    else:   # the order mattered: verify saw it, the folder is written without the swap
        assert r.returncode == 1, r.stdout + r.stderr
        assert "not applied" in doc["reorder_note"] and doc["applied_swaps"] == []
        assert doc["bases"][0]["layers"] == 1 and doc["proposed_swaps"]
    r = run_cli("verify", "--against", str(out), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
