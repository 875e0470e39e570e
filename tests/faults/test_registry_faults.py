"""Registry faults on the real engine and a registry each test starts for itself (never the shared
:5000 one): the registry killed mid-push, its disk full, a link that stalls mid-blob. Each ends with
the rerun that shows nothing was lost."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SEED, LocalRegistry, run_cli, write_file
from layerwise.oci.registry import TIMEOUT_VARIABLE, Registry

BUSYBOX = "localhost:5000/os/busybox:latest"


def blob_size(registry: LocalRegistry, digest: str) -> int:
    hexdigest = digest.split(":", 1)[1]
    return (registry.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data").stat().st_size


def tags_of(registry_host: str, images: dict[str, str]) -> dict[str, str | None]:
    """repository:tag → the digest it points to (None: no such tag)."""
    with Registry(registry_host) as reg:
        return {ref: reg.manifest_digest(*ref.rsplit(":", 1)) for ref in images}


def one_error_line(stderr: str) -> str:
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("layerwise: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- 1. the registry killed (SIGKILL) while the seed's 268 MB model layer is uploading -----------------

@pytest.fixture(scope="module")
def big_seed(tmp_path_factory):
    """The seed example with its 256 MiB model, copied once for the module."""
    dest = tmp_path_factory.mktemp("big-seed") / "seed"
    shutil.copytree(SEED, dest, ignore=shutil.ignore_patterns("*.tmp", "layerwise.state.json"))
    subprocess.run([sys.executable, str(dest / "prepare.py"), str(dest)], check=True, capture_output=True)
    assert (dest / "models" / "dust.model").stat().st_size == 256 << 20
    return dest


def seed_for(seed: Path, registry: LocalRegistry, project: str) -> Path:
    stack = seed / "layerwise.yaml"
    text = (SEED / "layerwise.yaml").read_text()
    stack.write_text(text.replace("registry: localhost:5000", f"registry: {registry.host}")
                     .replace("project: ai", f"project: {project}"))
    (seed / "layerwise.state.json").unlink(missing_ok=True)
    return stack


def test_registry_killed_while_the_model_layer_uploads(services, big_seed, tmp_path):
    project = "faults-registry-kill"
    # An uninterrupted run first, on a registry of its own, for the digests and the bytes of a full push.
    clean = LocalRegistry(write_dir(tmp_path / "clean"))
    port = clean.port
    try:
        stack = seed_for(big_seed, clean, project)
        started = time.monotonic()
        done = run_cli("build", str(stack), "--push", "--json")
        assert done.returncode == 0, done.stderr
        full_seconds = time.monotonic() - started
        expected = {r["key"]: r["digest"] for r in json.loads(done.stdout)["images"]}
        full_uploads = clean.blob_uploads()
        full_bytes = sum(blob_size(clean, d) for d in full_uploads)
    finally:
        clean.stop()

    # The same registry address over empty storage: the run the registry dies in.
    registry = LocalRegistry(write_dir(tmp_path / "faulty"), port=port)
    try:
        stack = seed_for(big_seed, registry, project)
        uploads = registry.storage / "docker/registry/v2/repositories/ai-tools/env-anaconda-dust/_uploads"
        started = time.monotonic()
        build = subprocess.Popen([sys.executable, "-m", "layerwise", "build", str(stack), "--push", "--json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed_at = 0
        while build.poll() is None and time.monotonic() - started < 600:
            partial = [f.stat().st_size for f in uploads.glob("*/data")] if uploads.is_dir() else []
            if partial and max(partial) > 64 << 20:          # only the model layer is that big
                registry.kill()
                killed_at = max(partial)
                break
            time.sleep(0.02)
        out, err = build.communicate(timeout=300)
        assert killed_at, f"the model layer was never seen uploading: {err}"
        line = one_error_line(err)
        assert build.returncode == 2 and out == ""
        assert f"registry {registry.host} failed the upload of blob {registry.host}/ai-tools/env-anaconda-dust@sha256:" in line
        assert "nothing was tagged" in line
        fault_seconds = time.monotonic() - started

        registry.start()                                     # the same storage, the same address
        before = registry.blob_uploads()
        human = {f"{k}:{t}": expected[k] for k, t in (("library/python3", "latest"), ("ai-tools/env-anaconda", "12"),
                                                     ("ai-tools/env-anaconda-dust", "runtime"),
                                                     (f"{project}/app1", "latest"), (f"{project}/app2", "latest"))}
        after_fault = tags_of(registry.host, human)
        # No tag moved: what was finished carries the uninterrupted digests, the rest no tag at all.
        assert after_fault["ai-tools/env-anaconda-dust:runtime"] is None
        assert after_fault[f"{project}/app1:latest"] is None and after_fault[f"{project}/app2:latest"] is None
        assert all(d is None or d == human[ref] for ref, d in after_fault.items()), after_fault
        assert not tags_in(registry, "ai-tools/env-anaconda-dust")     # not even its fingerprint tag

        started = time.monotonic()
        rerun = run_cli("build", str(stack), "--push", "--json")
        rerun_seconds = time.monotonic() - started
        assert rerun.returncode == 0, rerun.stderr
        again = registry.blob_uploads()[len(before):]
        assert not set(again) & set(before), "a blob pushed before the kill was pushed again"
        assert sorted(before + again) == sorted(full_uploads)  # together: exactly the full push, once each
        assert {r["key"]: r["digest"] for r in json.loads(rerun.stdout)["images"]} == expected
        assert tags_of(registry.host, human) == human
        again_bytes = sum(blob_size(registry, d) for d in again)
        print(f"\nregistry killed at {killed_at} bytes of the model layer; full push {full_bytes} bytes in "
              f"{len(full_uploads)} blobs ({full_seconds:.1f} s); faulty run {fault_seconds:.1f} s; rerun re-pushed "
              f"{again_bytes} bytes in {len(again)} blobs ({rerun_seconds:.1f} s)")
    finally:
        registry.stop()


def write_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def tags_in(registry: LocalRegistry, repository: str) -> list[str]:
    """The tags a repository has, from the registry's storage (none when the repository is not there)."""
    folder = registry.storage / "docker/registry/v2/repositories" / repository / "_manifests/tags"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# -- 2. the registry's storage full (its data on a small tmpfs) ----------------------------------------

SMALL_STACK = """\
registry: {host}
project: {project}
base: {base}
categories:
  - {{name: data, owner: platform}}
  - {{name: code, owner: apps}}
apps:
  app1: {{data: COPY big.bin /data/big.bin, code: RUN echo one > /app}}
"""


def small_stack(folder: Path, host: str, project: str, mib: int = 24, base: str = BUSYBOX) -> Path:
    """One app on busybox with `mib` MiB of incompressible data: a blob of that size to push."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "big.bin").write_bytes(os.urandom(mib << 20))
    return write_file(folder / "layerwise.yaml", SMALL_STACK.format(host=host, project=project, base=base))


@pytest.fixture
def tmpfs(tmp_path):
    """A folder on a tmpfs of 8 MiB (mounted as root; unmounted afterwards)."""
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_registry_storage_full(services, tmp_path, tmpfs):
    registry = LocalRegistry(write_dir(tmp_path / "registry"), storage=tmpfs / "data")
    try:
        stack = small_stack(tmp_path / "stack", registry.host, "faults-registry-full")
        started = time.monotonic()
        failed = run_cli("build", str(stack), "--push")
        fault_seconds = time.monotonic() - started
        line = one_error_line(failed.stderr)
        assert failed.returncode == 2
        assert f"registry {registry.host} answered HTTP 5" in line and "faults-registry-full/app1@sha256:" in line
        assert not tags_in(registry, "faults-registry-full/app1")        # nothing tagged
        before = registry.blob_uploads()

        subprocess.run(["mount", "-o", "remount,size=256m", str(tmpfs)], check=True)   # space freed
        started = time.monotonic()
        rerun = run_cli("build", str(stack), "--push", "--json")
        rerun_seconds = time.monotonic() - started
        assert rerun.returncode == 0, rerun.stderr
        (app,) = json.loads(rerun.stdout)["images"]
        assert app["status"] == "built"
        assert tags_of(registry.host, {"faults-registry-full/app1:latest": ""}) == {
            "faults-registry-full/app1:latest": app["digest"]}
        again = registry.blob_uploads()[len(before):]
        assert not set(again) & set(before)                               # what fitted is not sent again
        print(f"\nstorage full: {line}\nfaulty run {fault_seconds:.1f} s; rerun {rerun_seconds:.1f} s, pushed "
              f"{sum(blob_size(registry, d) for d in again)} bytes in {len(again)} blobs")
    finally:
        registry.stop()
