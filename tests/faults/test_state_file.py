"""A broken state file and a second build of the same stack, without the services: the state file
is checked and the lock taken before the engine is asked for anything."""

import json

import pytest

from conftest import run_cli
from layerwise.atomic import _temporaries, remove_temporaries, replace_folder, write_atomically
from layerwise.errors import UserError
from layerwise.family.state import STATE_FILE, State, load_state, locked

STACK = """\
registry: localhost:5000
project: fp-state
base: localhost:5000/os/busybox:latest
categories:
  - {name: code, owner: apps}
apps:
  app1: {code: RUN echo one > /app}
  app2: {code: RUN echo two > /app}
"""

BROKEN = {
    "cut short": ('{"schema": "layerwise.state/v1",\n "images": {"x": {"fingerprint": "ab', ":2: ",
                  "not valid JSON"),
    "hand-edited type": (json.dumps({"schema": "layerwise.state/v1", "images": {"x": {
        "fingerprint": "ab", "parent_fingerprint": None, "base": "b", "category_steps": {},
        "layers": [{"step": "s", "digest": "sha256:0", "size": "big"}]}}}), ": ", "images.x.layers.0.size"),
    "another schema": ('{"schema": "layerwise.state/v9"}', ": ", "its schema is 'layerwise.state/v9'"),
    "not an object": ("[1, 2]", ": ", "its schema is None"),
    "binary": (b"\x00\xff\xfe garbage", ": ", "not UTF-8"),
    "nested 100,000 deep": ("[" * 100_000 + "]" * 100_000, ": ", "nested too deep"),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_a_broken_state_file_is_one_line_with_the_way_out(write_stack, kind):
    text, where, what = BROKEN[kind]
    stack = write_stack(STACK)
    state = stack.parent / STATE_FILE
    state.write_bytes(text if isinstance(text, bytes) else text.encode())
    for args in (["plan", str(stack)], ["build", str(stack), "--push"]):
        result = run_cli(*args)
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith(f"layerwise: error: {state}{where}"), lines[0]
        assert what in lines[0] and "delete it" in lines[0], lines[0]
    state.unlink()        # the way out it names
    assert run_cli("plan", str(stack)).returncode == 0


def test_a_state_file_layerwise_wrote_reads_back(tmp_path):
    stack = tmp_path / "layerwise.yaml"
    state = State(tmp_path / STATE_FILE, base_digest="sha256:" + "0" * 64,
                  pull_costs={"docker": {"per_pull": 0.3, "per_layer": 0.05}})
    state.save()
    again = load_state(stack)
    assert (again.base_digest, again.pull_costs, again.images) == (state.base_digest, state.pull_costs, {})


def test_a_second_build_refuses_with_no_wait_and_names_the_holder(write_stack):
    stack = write_stack(STACK)
    with locked(stack):
        result = run_cli("build", str(stack), "--push", "--no-wait")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    line, = result.stderr.strip().splitlines()
    import os
    assert f"another build of this stack is running (pid {os.getpid()})" in line
    assert line.startswith(f"layerwise: error: {stack.parent / (STATE_FILE + '.lock')}: ")


def test_the_lock_is_free_again_once_its_holder_is_done(tmp_path):
    stack = tmp_path / "layerwise.yaml"
    with locked(stack):
        pass
    with locked(stack, wait=False):       # no error: the first one let go
        pass
    with locked(stack), pytest.raises(UserError, match="another build of this stack is running"):
        with locked(stack, wait=False):
            pass


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    write_atomically(target, "old")

    def interrupted(src, dst):      # Ctrl-C lands when the new bytes are written, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr("layerwise.atomic.os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_an_interrupted_folder_leaves_the_old_folder_and_no_temporary(tmp_path):
    out = tmp_path / "gen"
    replace_folder(out, lambda d: (d / "marker").write_text("first"), force=False,
                   is_ours=lambda d: True, marker="marker")

    def fill(d):
        (d / "marker").write_text("second")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_folder(out, fill, force=False, is_ours=lambda d: True, marker="marker")
    assert (out / "marker").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]


def test_remove_temporaries_deletes_what_is_being_written(tmp_path):
    half = tmp_path / ".x.json.0000.tmp"
    half.write_text("{\"v\":")
    _temporaries.add(half)
    try:
        remove_temporaries()
    finally:
        _temporaries.discard(half)
    assert not half.exists()


def test_a_state_file_without_uncompressed_sizes_still_serves_the_plan(write_stack):
    """Older state files recorded compressed sizes only: the plan keeps the hinted uncompressed size
    for those layers, and takes the recorded one where there is one."""
    from layerwise.family.state import with_measured_sizes
    from layerwise.plan.planner import build_plan
    from layerwise.plan.spec import load_stack

    stack = write_stack(STACK.replace("app1: {code: RUN echo one > /app}",
                                      "app1: {code: {steps: RUN echo one > /app, size: 5000}}")
                             .replace("app2: {code: RUN echo two > /app}",
                                      "app2: {code: {steps: RUN echo two > /app, size: 6000}}"))
    plan = build_plan(load_stack(stack))
    one, two = (next(s for s in plan.image(plan.apps[app]).steps if s.creates_layer) for app in ("app1", "app2"))
    record = {"fingerprint": "ab", "parent_fingerprint": None, "base": "b", "category_steps": {}}
    (stack.parent / STATE_FILE).write_text(json.dumps({"schema": "layerwise.state/v1", "images": {
        "app1": {**record, "layers": [{"step": one.identity, "digest": "sha256:1", "size": 100}]},
        "app2": {**record, "layers": [{"step": two.identity, "digest": "sha256:2", "size": 200, "unpacked": 10240}]},
    }}))
    measured = with_measured_sizes(plan, load_state(stack).measured_sizes())
    one, two = (next(s for s in measured.image(measured.apps[app]).steps if s.creates_layer)
                for app in ("app1", "app2"))
    assert (one.size, one.unpacked, one.size_source) == (100, 5000, "measured")
    assert (two.size, two.unpacked) == (200, 10240)
    assert one.inflated == 5000 and two.inflated == 10240      # both shrink to under half: coded
