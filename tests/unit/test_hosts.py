"""The bench pull hosts (layerwise.measure.hosts): a dockerd and a containerd of their own, for real.

Each integration test starts a daemon of its own under a temporary directory, pulls a 1 MB image
from the loopback registry, wipes, pulls again and stops; the main Docker Engine must not notice.
"""
from pathlib import Path

import pytest

from layerwise.errors import UserError
from layerwise.measure.hosts import ContainerdHost, DockerHost, loopback_reference, normalized


def test_only_loopback_registries_are_pulled_from():
    assert normalized("localhost:5000/os/busybox") == "localhost:5000/os/busybox:latest"
    assert normalized("127.0.0.1:5000/a/b:1") == "127.0.0.1:5000/a/b:1"
    assert normalized("localhost:5000/a@sha256:" + "0" * 64) == "localhost:5000/a@sha256:" + "0" * 64
    for ref in ("docker.io/library/busybox:latest", "registry.example.com:5000/a:1", "10.0.0.1:5000/a"):
        with pytest.raises(UserError, match="loopback"):
            loopback_reference(ref)
    with pytest.raises(UserError, match="loopback"):
        normalized("busybox")          # docker.io/library/busybox:latest
    # Refused before the daemon is even looked for.
    for host in (DockerHost("/nonexistent/lw"), ContainerdHost("/nonexistent/lw")):
        with pytest.raises(UserError, match="loopback"):
            host.pull("docker.io/library/busybox:latest")
        host.stop()        # never started: a no-op


def test_default_directories():
    host = ContainerdHost()
    assert host.data_dir == Path("/var/lib/layerwise/bench/containerd")
    assert host.run_dir == Path("/run/layerwise/bench/containerd")
    assert DockerHost().kind == "docker" and host.kind == "containerd"
