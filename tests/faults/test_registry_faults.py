"""Registry faults on the real engine and a registry each test starts for itself (never the shared
:5000 one): the registry killed mid-push, its disk full, a link that stalls mid-blob. Each ends with
the rerun that shows nothing was lost."""
from __future__ import annotations

import json
import os
import re
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

    # The same registry address over storage holding only last release's human tags (a busybox
    # stands in for it): the run the registry dies in.
    registry = LocalRegistry(write_dir(tmp_path / "faulty"), port=port)
    try:
        released = {ref: copy_image("localhost:5000", "os/busybox", "latest", registry.host, to=ref)
                    for ref in ("ai-tools/env-anaconda-dust:runtime", f"{project}/app1:latest")}
        seeded = len(registry.blob_uploads())
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
        before = registry.blob_uploads()[seeded:]
        human = {f"{k}:{t}": expected[k] for k, t in (("library/python3", "latest"), ("ai-tools/env-anaconda", "12"),
                                                     ("ai-tools/env-anaconda-dust", "runtime"),
                                                     (f"{project}/app1", "latest"), (f"{project}/app2", "latest"))}
        after_fault = tags_of(registry.host, human)
        # No tag moved: last release's still point where they did, what was finished carries the
        # uninterrupted digests, the rest has no tag at all.
        assert {ref: after_fault[ref] for ref in released} == released
        assert after_fault[f"{project}/app2:latest"] is None
        assert all(d in (None, human[ref], released.get(ref)) for ref, d in after_fault.items()), after_fault
        assert tags_in(registry, "ai-tools/env-anaconda-dust") == ["runtime"]   # not even its fingerprint tag

        started = time.monotonic()
        rerun = run_cli("build", str(stack), "--push", "--json")
        rerun_seconds = time.monotonic() - started
        assert rerun.returncode == 0, rerun.stderr
        again = registry.blob_uploads()[seeded + len(before):]
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
        assert f"registry {registry.host} answered HTTP 500 for blob {registry.host}/faults-registry-full/" in line
        assert line.endswith("no space left on device; its storage is full: free space there, then run the "
                             "command again")
        assert all_tags(registry) == {}                                   # nothing tagged
        before = registry.blob_uploads()

        subprocess.run(["mount", "-o", "remount,size=256m", str(tmpfs)], check=True)   # space freed
        started = time.monotonic()
        rerun = run_cli("build", str(stack), "--push", "--json")
        rerun_seconds = time.monotonic() - started
        assert rerun.returncode == 0, rerun.stderr
        images = json.loads(rerun.stdout)["images"]
        assert [i["status"] for i in images] == ["built", "built"]
        assert tags_of(registry.host, {"faults-registry-full/app1:latest": ""}) == {
            "faults-registry-full/app1:latest": next(i["digest"] for i in images if i["key"].endswith("/app1"))}
        again = registry.blob_uploads()[len(before):]
        assert not set(again) & set(before)                               # what fitted is not sent again
        print(f"\nstorage full: {line}\nfaulty run {fault_seconds:.1f} s; rerun {rerun_seconds:.1f} s, pushed "
              f"{sum(blob_size(registry, d) for d in again)} bytes in {len(again)} blobs")
    finally:
        registry.stop()


def all_tags(registry: LocalRegistry) -> dict[str, list[str]]:
    """Every repository that has a tag → its tags, from the registry's storage."""
    root = registry.storage / "docker/registry/v2/repositories"
    found = {str(p.parent.parent.relative_to(root)): sorted(t.name for t in p.iterdir())
             for p in root.rglob("_manifests/tags")} if root.is_dir() else {}
    return {repo: tags for repo, tags in found.items() if tags}


# -- 3. a stalled link: a proxy that stops passing bytes mid-blob, for pulls and pushes ---------------

STALL_TIMEOUT = "1"             # seconds, through LAYERWISE_REGISTRY_TIMEOUT: the tests stay short
NO_HANG = 120                   # a guard: a run that hangs fails here instead of blocking the suite


def layerwise(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layerwise", *args], capture_output=True, text=True,
                          env={**os.environ, TIMEOUT_VARIABLE: STALL_TIMEOUT, **(env or {})}, timeout=NO_HANG)


def copy_image(source: str, repository: str, tag: str, target: str, to: str | None = None) -> str:
    """Copy repository:tag (a plain manifest) from one registry to another, as `to` (REPOSITORY:TAG)
    when given; its manifest digest."""
    to_repository, to_tag = (to or f"{repository}:{tag}").rsplit(":", 1)
    with Registry(source) as src, Registry(target) as dst:
        manifest = src.manifest(repository, tag)
        for digest, size in [(manifest.config_digest, manifest.config_size),
                             *((l.digest, l.size) for l in manifest.layers)]:
            dst.upload_blob(to_repository, digest, src.blob(repository, digest), size)
        return dst.put_manifest_bytes(to_repository, to_tag, manifest.raw, manifest.media_type)


def test_audit_of_a_blob_that_stalls(services, local_registry, stalling_proxy, tmp_path):
    from conftest import FakeImage
    from layerwise.oci.mediatypes import DOCKER_MANIFEST
    image = FakeImage({"weights.bin": os.urandom(3 << 20)})              # one 3 MiB layer blob
    with Registry(local_registry.host) as reg:
        for digest, blob in image.blobs.items():
            reg.upload_blob("faults-registry/stall", digest, blob, len(blob))
        reg.put_manifest_bytes("faults-registry/stall", "v1", image.manifest_raw, DOCKER_MANIFEST)
    layer = image.manifest["layers"][0]["digest"]
    proxy = stalling_proxy(local_registry.port, down_after=1 << 20, dead=True)   # stops after 1 MiB, for good
    ref = f"{proxy.host}/faults-registry/stall:v1"
    cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}

    started = time.monotonic()
    stalled = layerwise("audit", ref, "--json", env=cache)
    seconds = time.monotonic() - started
    assert stalled.returncode == 1, stalled.stderr
    (audited,) = json.loads(stalled.stdout)["images"]
    error = audited["error"]
    assert "\n" not in error and "Traceback" not in stalled.stderr
    assert f"registry {proxy.host} failed sending " in error and layer in error and re.search(rf"\d+ of {image.manifest['layers'][0]['size']} bytes received", error), error
    assert f"it sent nothing for {STALL_TIMEOUT} s ({TIMEOUT_VARIABLE})" in error

    proxy.heal()                                                           # the link is back: nothing lost
    rerun = layerwise("audit", ref, "--json", env=cache)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    (audited,) = json.loads(rerun.stdout)["images"]
    assert audited["error"] is None and audited["layers"] == 1
    assert audited["bytes"] == image.manifest["layers"][0]["size"]
    print(f"\naudit, stalled link: one error after {seconds:.1f} s: {error}")


def test_push_of_a_blob_that_stalls(services, stalling_proxy, local_registry, tmp_path):
    proxy = stalling_proxy(local_registry.port, up_after=6 << 20, dead=True)    # takes 6 MiB, then nothing
    stack = small_stack(tmp_path / "stack", proxy.host, "faults-registry-stall", mib=16)
    started = time.monotonic()
    stalled = layerwise("build", str(stack), "--push")
    seconds = time.monotonic() - started
    line = one_error_line(stalled.stderr)
    assert stalled.returncode == 2
    assert re.search(rf"registry {proxy.host} failed the upload of blob {proxy.host}/faults-registry-stall/"
                     rf"data-[0-9a-f]+@sha256:[0-9a-f]{{64}}: \d+ of \d+ bytes sent, then it (took|sent) nothing for "
                     rf"{STALL_TIMEOUT} s \({TIMEOUT_VARIABLE}\)", line), line
    assert "nothing was tagged" in line
    assert all_tags(local_registry) == {}

    proxy.heal()
    rerun = layerwise("build", str(stack), "--push", "--json")
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(all_tags(local_registry)) == sorted(i["key"] for i in json.loads(rerun.stdout)["images"])
    print(f"\npush, stalled link: one error after {seconds:.1f} s: {line}")


def test_copy_of_a_base_image_whose_blob_stalls(services, stalling_proxy, local_registry, tmp_path):
    """The OS base lives on another registry, reached over a link that stalls mid-layer: the
    build copies the base's layers from there into the family's registry."""
    import docker
    base_registry = LocalRegistry(write_dir(tmp_path / "base-registry"))
    base = None
    try:
        copy_image("localhost:5000", "os/busybox", "latest", base_registry.host)
        proxy = stalling_proxy(base_registry.port, down_after=256 << 10, dead=True)
        base = f"{proxy.host}/os/busybox:latest"
        docker.from_env().images.get(BUSYBOX).tag(base)                 # the engine has it: no engine pull
        stack = small_stack(tmp_path / "stack", local_registry.host, "faults-registry-base", mib=1, base=base)
        started = time.monotonic()
        stalled = layerwise("build", str(stack), "--push")
        seconds = time.monotonic() - started
        line = one_error_line(stalled.stderr)
        assert stalled.returncode == 2
        assert re.search(rf"registry {proxy.host} failed sending layer 1/1 \(sha256:[0-9a-f]{{64}}\) of image {base}: "
                         rf"\d+ of \d+ bytes received, then it sent nothing for {STALL_TIMEOUT} s \({TIMEOUT_VARIABLE}\); "
                         rf"asked again from there, it sent nothing for {STALL_TIMEOUT} s", line), line
        assert all_tags(local_registry) == {}

        proxy.heal()
        rerun = layerwise("build", str(stack), "--push")
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "faults-registry-base/app1" in all_tags(local_registry)
        print(f"\nbase copy, stalled link: one error after {seconds:.1f} s: {line}")
    finally:
        if base:
            docker.from_env().images.remove(base, noprune=True)           # the tag only
        base_registry.stop()
