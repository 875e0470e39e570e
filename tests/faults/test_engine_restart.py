"""The Docker Engine dies in the middle of a build. Never the shared main engine: a private dockerd
(measure.hosts.DockerHost on a folder of the test's own) that layerwise reaches through DOCKER_HOST,
and whose images come from the registry on localhost:5000 like any fresh engine's. One clear error;
after the engine is back the rerun builds only what was left, and the result equals an uninterrupted
build's."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REGISTRY, run_cli, two_app_stack, write_file
from layerwise.family.state import load_state
from layerwise.measure.hosts import DockerHost
from layerwise.oci.images import RegistryImage
from layerwise.oci.registry import Registry


def stack_text(ns: str) -> str:
    return two_app_stack(ns, "RUN echo tools > /t", "RUN sleep 8 && echo one > /app", "RUN sleep 8 && echo two > /app")


@pytest.fixture
def private_engine(services):
    if os.geteuid() != 0:
        pytest.skip("a private dockerd needs root")
    base = Path(tempfile.mkdtemp(prefix="lwe-", dir="/tmp"))     # short: unix socket paths
    host = DockerHost(base)
    host.start()
    try:
        yield host
    finally:
        host.stop()
        shutil.rmtree(base, ignore_errors=True)


def layer_digests(ns: str) -> dict[str, list[str]]:
    with Registry(REGISTRY) as reg:
        return {app: [l.digest for l in RegistryImage(f"{REGISTRY}/{ns}/{app}:latest", registry=reg).layers]
                for app in ("app1", "app2")}


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
@pytest.mark.parametrize("builder", ["auto", "legacy"])
def test_engine_lost_mid_build_then_the_rerun_builds_what_is_left(private_engine, tmp_path, namespace, how,
                                                                    builder):
    ns = f"faults-process/{namespace}"
    stack = write_file(tmp_path / "stack" / "layerwise.yaml", stack_text(ns))
    env = {**os.environ, "DOCKER_HOST": f"unix://{private_engine.socket}", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "layerwise", "build", str(stack), "--push", "--builder", builder]
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while "sleep 8" not in (tmp_path / "out").read_text():      # the apps are in their long step
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "err").read_text()
        time.sleep(0.02)
    time.sleep(1)
    os.kill(private_engine.pid, how)
    code = proc.wait(timeout=120)
    stderr = (tmp_path / "err").read_text()
    assert code == 2 and "Traceback" not in stderr, (tmp_path / "out").read_text() + stderr
    line, = stderr.strip().splitlines()
    assert line.startswith(f"layerwise: error: lost the Docker Engine at unix://{private_engine.socket} while "
                           "building"), line
    assert "rerun" in line
    assert len(load_state(stack).images) == 1       # the base it pushed, nothing else
    with Registry(REGISTRY) as reg:
        assert reg.manifest_digest(f"{ns}/app1", "latest") is None

    private_engine.stop()                           # waits until a stopping daemon is gone, then cleans up
    private_engine.start()                          # back, empty: what was built lives in the registry
    rerun = run_cli("build", str(stack), "--push", "--json", "--builder", builder, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    statuses = {i["key"].rsplit("/", 1)[-1]: i["status"] for i in json.loads(rerun.stdout)["images"]}
    assert statuses == {next(k for k in statuses if k.startswith("tools")): "skipped",
                        "app1": "built", "app2": "built"}

    whole_ns = f"faults-process/{namespace}-whole"  # the same family, never interrupted
    whole = write_file(tmp_path / "whole" / "layerwise.yaml", stack_text(whole_ns))
    assert run_cli("build", str(whole), "--push", "--builder", builder, env=env).returncode == 0
    assert layer_digests(ns) == layer_digests(whole_ns)
