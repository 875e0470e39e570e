"""The bench pull hosts (layerwise.measure.hosts): a dockerd and a containerd of their own, for real.

Each integration test starts a daemon of its own under a temporary directory, pulls a 1 MB image
from the loopback registry, wipes, pulls again and stops; the main Docker Engine must not notice.
"""
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import pytest

from layerwise.errors import ServiceDown, UserError
from layerwise.measure.hosts import ContainerdHost, DockerHost, _alive, _which, mounts_under
from layerwise.oci.images import RegistryImage
from layerwise.oci.registry import Registry

REGISTRY = "localhost:5000"


REF = f"{REGISTRY}/os/busybox:latest"


MAIN_SOCKET = "/var/run/docker.sock"


def _bench_problem() -> str | None:
    if os.geteuid() != 0:
        return "the bench hosts start their own dockerd/containerd: run the tests as root"
    for binary in ("dockerd", "containerd", "ctr"):
        if not _which(binary):
            return f"{binary} is not installed (apt-get install docker.io containerd)"
    try:
        with Registry(REGISTRY, timeout=5) as reg:
            reg.ping()
            reg.manifest("os/busybox", "latest")
    except UserError as e:
        return f"registry on {REGISTRY} cannot serve os/busybox:latest ({e}); run: sudo scripts/services start"
    return None


@pytest.fixture(scope="module")
def bench():
    """Root, dockerd, containerd, ctr and the registry holding busybox. Outside CI a missing piece
    skips the test; in CI (CI set) it fails."""
    problem = _bench_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    with RegistryImage(f"{REGISTRY}/os/busybox:latest") as busybox:
        return {"layers": {l.digest for l in busybox.layers}, "diff_ids": set(busybox.diff_ids),
                "manifest": busybox.manifest_digest}


@pytest.fixture
def main_engine(bench):
    """The main Docker Engine: it must answer, run on, and keep its images, whatever the hosts do."""
    import docker
    try:
        client = docker.DockerClient(base_url=f"unix://{MAIN_SOCKET}", version="auto", timeout=30)
        client.ping()
    except Exception as e:   # noqa: BLE001
        problem = f"the main Docker Engine at {MAIN_SOCKET} is not answering ({type(e).__name__})"
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    pid_file = Path("/var/run/docker.pid")
    pid_before = pid_file.read_text().strip() if pid_file.exists() else None
    images_before = {i["Id"] for i in client.api.images(all=True)}
    since = int(time.time()) - 1
    yield client
    assert client.ping(), "the main Docker Engine stopped answering"
    if pid_before:
        assert pid_file.read_text().strip() == pid_before, "the main dockerd was restarted"
    images_after = {i["Id"] for i in client.api.images(all=True)}
    if len(images_after) != len(images_before):
        # Other clients may use the main engine meanwhile: only fail when nobody touched its images.
        events = list(client.api.events(since=since, until=int(time.time()) + 1, decode=True,
                                        filters={"type": "image"}))
        assert events, (f"the main engine's image count changed from {len(images_before)} to "
                        f"{len(images_after)} with no image event on it")
        warnings.warn(f"the main engine's image count changed ({len(images_before)} → {len(images_after)}) "
                      f"while {len(events)} image events came from other clients", stacklevel=2)
    client.close()


@pytest.mark.integration
@pytest.mark.parametrize("host_class", [DockerHost, ContainerdHost], ids=["docker", "containerd"])
def test_start_pull_wipe_pull_stop(host_class, bench, main_engine, tmp_path_factory):
    base = tmp_path_factory.mktemp(host_class.kind)
    host = host_class(base)
    with host:
        pid = host.pid
        assert _alive(pid) and host.running
        host.start()                                  # idempotent
        assert host.pid == pid
        assert host.start_seconds > 0     # measured; tests never bound wall time
        assert not host.has_image(REF) and host.blobs() == set()

        seconds = host.pull(REF)
        assert seconds > 0
        assert host.has_image(REF)
        held = host.blobs()
        if host.kind == "containerd":   # every blob pulled: layers, config, manifest
            assert bench["layers"] | {bench["manifest"]} <= held
        else:                           # dockerd keeps layers as diff_ids
            assert held == bench["diff_ids"]

        host.wipe()
        assert not host.has_image(REF)
        assert host.blobs() == set()

        assert host.pull(REF) > 0
        assert host.has_image(REF) and host.blobs() == held
    assert not _alive(pid) and not host.running and host.pid is None
    host.stop()                                       # idempotent
    assert mounts_under(base) == []
    assert not host.root.exists()


@pytest.mark.integration
def test_containerd_wipe_covers_every_namespace_and_leaves_no_file(bench, main_engine, tmp_path_factory):
    with ContainerdHost(tmp_path_factory.mktemp("ctrns")) as host:
        host.pull(REF)
        host.ctr("images", "pull", "--plain-http", "--platform", host.platform, REF, namespace="other")
        host.wipe()
        assert host._on_disk() == {"blobs": [], "ingests": [], "snapshots": []}
        assert host.ctr("images", "ls", "-q", namespace="other").stdout.strip() == ""


@pytest.mark.integration
def test_a_daemon_that_cannot_start_is_a_clear_service_down(bench, tmp_path_factory):
    class Broken(ContainerdHost):
        def _command(self):
            return super()._command() + ["--no-such-flag"]

    host = Broken(tmp_path_factory.mktemp("broken"), start_timeout=20)
    with pytest.raises(ServiceDown, match="exited with code") as failure:
        host.start()
    assert "no-such-flag" in str(failure.value)          # the log tail says why
    assert host.pid is None and not host.running
    host.stop()


@pytest.mark.integration
def test_a_leftover_directory_not_made_by_the_bench_is_never_deleted(bench, tmp_path_factory):
    base = tmp_path_factory.mktemp("foreign")
    (base / "data").mkdir()
    (base / "data" / "precious").write_text("keep me")
    with pytest.raises(UserError, match="not made by layerwise bench"):
        ContainerdHost(base).start()
    assert (base / "data" / "precious").read_text() == "keep me"
    shutil.rmtree(base)


@pytest.mark.integration
@pytest.mark.parametrize("host_class", [DockerHost, ContainerdHost], ids=["docker", "containerd"])
def test_a_bench_host_cannot_pull_beyond_loopback(host_class, bench, tmp_path_factory):
    """Past layerwise's own refusal, the daemon itself is held by the closed proxy (hosts._daemon_env):
    a pull from Docker Hub fails on 127.0.0.1:9 at once."""
    import docker.errors
    host = host_class(tmp_path_factory.mktemp(host_class.kind + "-net"))
    with host:
        if host.kind == "docker":
            try:       # refused up front (HTTP 500) or as an error event in the stream
                events = list(host._api().pull("docker.io/library/busybox", tag="latest", stream=True, decode=True))
                why = " ".join(e.get("error", "") for e in events)
            except docker.errors.APIError as e:
                why = str(e.explanation)
        else:
            result = host.ctr("images", "pull", "docker.io/library/busybox:latest", check=False, timeout=60)
            assert result.returncode != 0
            why = result.stderr + result.stdout
    assert re.search(r"proxyconnect .*127\.0\.0\.1:9", why), why


@pytest.mark.integration
def test_a_docker_host_on_the_containerd_store_runs_or_says_why_not(bench, main_engine, tmp_path_factory):
    """Where dockerd has a containerd image store (Engine 24+), the host pulls into its private
    containerd and wipes; where it has none (Debian's 20.10), it says so, and either way nothing it
    started is left running or mounted."""
    from layerwise.measure.hosts import DockerContainerdHost, HostUnsupported
    base = tmp_path_factory.mktemp("docker-containerd")
    host = DockerContainerdHost(base, run_dir=base / "r")
    try:
        host.start()
    except HostUnsupported as e:
        assert "containerd image store" in str(e) and "Docker Engine 24" in str(e)
        supported = False
    else:
        supported = True
        with host:
            host.pull(REF)
            assert bench["layers"] <= host.blobs()     # the blobs are in its containerd
            host.wipe()
            assert host.blobs() == set()
    inner = host.containerd
    assert not host.running and not inner.running and host.pid is None and inner.pid is None
    assert mounts_under(base) == []
    print("docker-containerd host supported here:", supported)
