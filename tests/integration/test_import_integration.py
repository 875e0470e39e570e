"""Import → refactor → build → verify, end to end on the real engine, with Dockerfiles written here.

Three apps share a base OS and setup (a RUN, an ENV, a COPY of the same files); one is multi-stage.
`layerwise verify` must find the refactored images equal to the originals, and name the difference
once a refactored Dockerfile is broken on purpose.
"""

from __future__ import annotations

import json
import re

import pytest

from conftest import run_cli

pytestmark = pytest.mark.integration

BASE = "localhost:5000/os/busybox:latest"
SETUP = (f"FROM {BASE}\n"
         "RUN mkdir -p /opt/shared && echo tools > /opt/shared/tools.txt && chmod 0750 /opt/shared\n"
         "ENV SHARED=1\n"
         "COPY lib/ /opt/lib/\n")


def write_apps(root):
    files = {
        "a/Dockerfile": SETUP + "RUN echo a > /opt/app.txt\nWORKDIR /opt\nCMD [\"cat\", \"/opt/app.txt\"]\n",
        "b/Dockerfile": SETUP + "RUN echo b > /opt/app.txt && chmod 0600 /opt/app.txt\nUSER 1000\nEXPOSE 8080\n",
        "c/Dockerfile": SETUP.replace(f"FROM {BASE}", f"FROM {BASE} AS build")
        + "RUN echo c > /opt/shared/c.txt\n"
        f"FROM {BASE}\nCOPY --from=build /opt/shared /srv/shared\nCMD [\"ls\", \"/srv/shared\"]\n",
    }
    for app in "abc":
        files[f"{app}/lib/util.sh"] = "echo util\n"
        files[f"{app}/lib/data/values.txt"] = "1 2 3\n"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_import_refactor_build_verify(services, namespace, tmp_path):
    src = write_apps(tmp_path / "src")
    out = tmp_path / "refactored"
    r = run_cli("import", str(src), "--refactor-to", str(out), "--project", namespace, "--verify", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    verified = {a["app"]: a for a in doc["verify"]["apps"]}
    assert set(verified) == {"a", "b", "c"} and all(a["equivalent"] for a in verified.values())
    # Built, the base's size is measured: the RUN writes 6 bytes, the COPY 16; each of 3 apps but one saves them.
    (measured,) = doc["verify"]["measured_base_bytes"].values()
    assert 22 <= measured < 10_000 and doc["verify"]["measured_saving"] == 2 * measured
    # One base: the setup (RUN, ENV, COPY of the same files) shared by a, b and c's build stage.
    assert [b["used_by"] for b in doc["bases"]] == [["a", "b", "c"]]
    assert doc["bases"][0]["layers"] == 2 and doc["bases"][0]["known_bytes"] == len("echo util\n1 2 3\n")
    assert all(not a["text_only_lines"] for a in doc["apps"])
    base_ref = doc["bases"][0]["ref"]
    assert (out / "apps/a/Dockerfile").read_text().count(f"FROM {base_ref}") == 1
    (base_dir,) = (out / "bases").iterdir()
    assert (base_dir / "context/lib/data/values.txt").read_text() == "1 2 3\n"

    r = run_cli("verify", str(src), "--against", str(out), "--no-cache", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    results = {a["app"]: a for a in json.loads(r.stdout)["apps"]}
    assert set(results) == {"a", "b", "c"} and all(a["equivalent"] for a in results.values())

    # Break app b on purpose: its file gets other bytes and mode, and it forgets its port.
    broken = out / "apps/b/Dockerfile"
    text = broken.read_text().replace("echo b > /opt/app.txt && chmod 0600", "echo B > /opt/app.txt && chmod 0644")
    broken.write_text(text.replace("EXPOSE 8080\n", ""))
    r = run_cli("verify", str(src / "b"), "--against", str(out), "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    (only,) = json.loads(r.stdout)["apps"]
    assert only["app"] == "b" and not only["equivalent"]
    said = json.dumps(only["differences"])
    assert "/opt/app.txt" in said and "ExposedPorts" in said
    assert re.search(r"mode|sha256|content", said)
