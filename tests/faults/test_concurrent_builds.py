"""Two builds of the same stack at once, on the real engine and registry: the second waits for the
first (the lock beside the state file), then has nothing left to build; one told to stop while it
waits ends at once (143); one with --no-wait stops at once. The state file stays whole throughout."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import REGISTRY, run_cli, two_app_stack, write_file
from layerwise.family.state import STATE_FILE, load_state
from layerwise.oci.registry import Registry


def stack_text(ns: str) -> str:
    return two_app_stack(ns, "RUN echo tools > /t", f"RUN sleep 20 && echo {ns}-one > /app",
                         f"RUN sleep 20 && echo {ns}-two > /app")


def start(tmp_path, name, *args):
    out, err = open(tmp_path / f"{name}.out", "wb"), open(tmp_path / f"{name}.err", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "layerwise", *args], stdout=out, stderr=err,
                            stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out.close()
    err.close()
    return proc


def test_the_second_build_waits_then_builds_nothing(services, tmp_path, namespace):
    ns = f"faults-process/{namespace}"      # in the RUN too: the engine's cache must not make it quick
    stack = write_file(tmp_path / "stack" / "layerwise.yaml", stack_text(ns))
    lock = stack.parent / (STATE_FILE + ".lock")
    first = start(tmp_path, "first", "build", str(stack), "--push", "--json")
    deadline = time.monotonic() + 120
    while not (lock.exists() and f"pid {first.pid}" in lock.read_text()):
        assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.err").read_text()
        time.sleep(0.01)

    refused = run_cli("build", str(stack), "--push", "--no-wait")
    assert first.poll() is None, "the first build ended before the others could meet it"
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"layerwise: error: {lock}: another build of this stack is running (pid {first.pid}); run again once "
        "it is done, or without --no-wait to wait for it"]

    second = start(tmp_path, "second", "build", str(stack), "--push", "--json")
    stopped = start(tmp_path, "stopped", "build", str(stack), "--push")     # waits too, then is told to stop
    for name, proc in (("second", second), ("stopped", stopped)):
        while "waiting for another build" not in (tmp_path / f"{name}.err").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / f"{name}.err").read_text()
            time.sleep(0.01)
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=30) == 143
    assert (tmp_path / "stopped.err").read_text().strip().splitlines()[-1] == (
        "layerwise: interrupted by SIGTERM; a rerun goes on from what was finished")

    assert first.wait(timeout=120) == 0, (tmp_path / "first.err").read_text()
    assert second.wait(timeout=120) == 0, (tmp_path / "second.err").read_text()
    assert (f"layerwise: waiting for another build of this stack to finish (pid {first.pid}; lock {lock})"
            in (tmp_path / "second.err").read_text())
    built = json.loads((tmp_path / "first.out").read_text())["counts"]
    after = json.loads((tmp_path / "second.out").read_text())["counts"]
    assert (built["built"], after["built"], after["skipped"]) == (3, 0, 3)

    state = load_state(stack)          # whole, and naming every image as the registry has it
    assert len(state.images) == 3
    with Registry(REGISTRY) as reg:
        for key, rec in state.images.items():
            name = key.removeprefix(REGISTRY + "/")
            assert reg.manifest_digest(name, "lw-" + rec.fingerprint[:16]) == rec.digest
