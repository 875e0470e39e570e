"""Byte-for-byte outputs, taken before the cost model was made linear (issue 11) and its rules
written once (issue 12): `plan --json` and `simulate --json` of the seed and of synthetic families
(bench/scale.py), and `audit --json` of OCI layouts made here. Any change to a figure fails here.

To take them anew after a change that is meant to alter the output:
    LAYERWISE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py
"""

import gzip
import hashlib
import importlib.util
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from conftest import ROOT, SEED, run_cli

GOLDEN = ROOT / "tests" / "golden"


def _scale():
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("LAYERWISE_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden {path}: run with LAYERWISE_UPDATE_GOLDEN=1 once"
    assert text == path.read_text(), f"output differs from {path}"


def cli_out(*args: str, env: dict | None = None) -> str:
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_seed_plan_and_simulate(small_seed):
    plan = cli_out("plan", str(small_seed), "--json")
    assert str(small_seed.parent) not in plan           # no machine-specific paths in the plan
    check("seed-plan.json", plan)
    check("seed-simulate.json", cli_out("simulate", str(small_seed), "--fleet", str(SEED / "fleet.yaml"),
                                        "--json"))


@pytest.mark.parametrize("apps,steps,groups", [(7, 12, 3), (24, 30, 5), (41, 18, 10)])
def test_synthetic_plan_and_simulate(tmp_path, apps, steps, groups):
    scale = _scale()
    stack, fleet = tmp_path / "layerwise.yaml", tmp_path / "fleet.yaml"
    stack.write_text(scale.family(apps, steps))
    fleet.write_text(scale.fleet(apps, groups))
    check(f"synthetic-{apps}x{steps}-plan.json", cli_out("plan", str(stack), "--json"))
    check(f"synthetic-{apps}x{steps}-simulate.json",
          cli_out("simulate", str(stack), "--fleet", str(fleet), "--json"))


# -- audit: OCI layouts written here, byte for byte the same on every run -------------------------------

def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(files: dict[str, bytes], mtime: int = 0) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _layout(root: Path, layers: list[tuple[str, bytes, int]]) -> Path:
    """An OCI layout of one image; each layer is (history text, tar, gzip level)."""
    def blob(data: bytes) -> str:
        digest = _sha(data)
        path = root / "blobs" / "sha256" / digest[7:]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return digest

    gz = [gzip.compress(tar, compresslevel=level, mtime=0) for _, tar, level in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "history": [{"created_by": text} for text, _, _ in layers],
                         "rootfs": {"type": "layers", "diff_ids": [_sha(t) for _, t, _ in layers]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                   "digest": blob(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": len(g),
                    "digest": blob(g)} for g in gz]}).encode()
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": blob(manifest),
         "size": len(manifest)}]}))
    return root


def test_audit(tmp_path):
    os_files = {f"usr/bin/tool{i}": bytes([i]) * (3000 + 97 * i) for i in range(12)}
    tools = {"opt/tools/run.sh": b"#!/bin/sh\necho tools\n" * 40, "opt/tools/lib.py": b"x = 1\n" * 300}
    lib = {f"srv/lib/m{i}.py": (f"def f{i}(): return {i}\n" * 50).encode() for i in range(8)}
    base = ("ADD rootfs.tar /", _tar(os_files), 6)
    images = {
        "a": [base, ("COPY tools/ /opt/tools/", _tar(tools), 6), ("RUN pip install lib", _tar(lib), 6),
              ("COPY code/ /srv/", _tar({"srv/a.py": b"print('a')\n" * 20}), 6)],
        "b": [base, ("COPY tools/ /opt/tools/", _tar(tools), 6), ("RUN pip install lib", _tar(lib), 6),
              ("COPY code/ /srv/", _tar({"srv/b.py": b"print('b')\n" * 30}), 6)],
        # The same base recompressed, the tools copied again at another time (other diff_id, same
        # files) and the library built again with one file more (near-identical).
        "c": [(base[0], base[1], 1), ("COPY tools/ /opt/tools/", _tar(tools, mtime=7), 6),
              ("RUN pip install lib", _tar(lib | {"srv/lib/extra.py": b"y = 2\n" * 10}), 6)],
    }
    paths = [str(_layout(tmp_path / name, layers)) for name, layers in images.items()]
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = run_cli("audit", *paths, "--json", env=env)
    assert result.returncode == 0, result.stderr
    check("audit.json", result.stdout.replace(str(tmp_path), "<tmp>"))


# Families with COPY steps of real files, config-only steps, merged RUNs, owners that change, a
# hand-made tree to compare with, hosts of both kinds, and size hints that disagree about the same
# content (the order in which layers are counted decides which size wins): outputs of the code
# before the per-node rewrite, kept with their inputs under golden/mixed-*.
@pytest.mark.parametrize("family", ["mixed-52", "mixed-53"])
def test_mixed_families(family):
    folder = GOLDEN / family
    stack, fleet, compare = (str(folder / n) for n in ("layerwise.yaml", "fleet.yaml", "compare.yaml"))
    assert cli_out("plan", stack, "--json") == (folder / "plan.json").read_text()
    assert cli_out("simulate", stack, "--fleet", fleet, "--json", "--compare", compare) == \
        (folder / "simulate-compare.json").read_text()
    assert cli_out("simulate", stack, "--fleet", fleet, "--json", "--host-kind", "containerd",
                   "--compare", compare) == (folder / "simulate-containerd.json").read_text()
