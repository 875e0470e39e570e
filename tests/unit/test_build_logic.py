"""Build decisions without an engine: ordering, skip logic, reasons, --only, and refusals."""
import pytest

from layerwise.errors import UserError
from layerwise.family.build import BUILD, NOT_SELECTED, SKIP, check_buildable, decide, select
from layerwise.family.state import ImageRecord, State
from layerwise.plan.planner import build_plan
from layerwise.plan.spec import load_stack

STACK = """\
registry: localhost:5000
project: t
base: localhost:5000/os/busybox:latest
categories:
  - {name: tools, owner: p}
  - {name: code, owner: a}
apps:
  a: {tools: RUN echo tools, code: RUN echo a}
  b: {tools: RUN echo tools, code: RUN echo b}
"""


def plan_of(write_stack, text=STACK):
    path = write_stack(text)
    return build_plan(load_stack(path)), path


def recorded(plan, path):
    state = State(path.parent / "state.json")
    for img in plan.images:
        state.images[img.key] = ImageRecord.of(plan, img)
    return state


def test_everything_is_built_first_in_dependency_order(write_stack):
    plan, path = plan_of(write_stack)
    decisions = decide(plan, set(), State(path), select(plan, None))
    assert [d.action for d in decisions] == [BUILD, BUILD, BUILD]
    tools = plan.images[0].key
    assert tools.startswith("t/tools-") and [d.key for d in decisions] == [tools, "t/a", "t/b"]
    assert all(d.reason == "not built before" for d in decisions)


def test_present_fingerprints_are_skipped(write_stack):
    plan, path = plan_of(write_stack)
    present = {img.key for img in plan.images}
    decisions = decide(plan, present, recorded(plan, path), select(plan, None))
    assert {d.action for d in decisions} == {SKIP}


def test_changed_code_rebuilds_only_that_app_and_says_why(write_stack):
    plan, path = plan_of(write_stack)
    state = recorded(plan, path)
    new_plan, _ = plan_of(write_stack, STACK.replace("RUN echo a}", "RUN echo a2}"))
    present = {k for k in (img.key for img in new_plan.images) if plan.image(k).fingerprint ==
               new_plan.image(k).fingerprint}
    decisions = {d.key: d for d in decide(new_plan, present, state, select(new_plan, None))}
    assert decisions["t/a"].action == BUILD and decisions["t/a"].reason == "code of a changed"
    assert decisions["t/b"].action == SKIP


def test_changed_base_layer_rebuilds_descendants_with_parent_reason(write_stack):
    plan, path = plan_of(write_stack)
    state = recorded(plan, path)
    new_plan, _ = plan_of(write_stack, STACK.replace("RUN echo tools", "RUN echo tools2"))
    decisions = decide(new_plan, set(), state, select(new_plan, None))
    tools_key = new_plan.images[0].key
    # The derived name follows the fingerprint, so the tools image is new; the apps say why.
    reasons = {d.key: d.reason for d in decisions}
    assert reasons[tools_key] == "not built before"
    assert reasons["t/a"] == "parent " + tools_key.split("/")[1] + " rebuilt"


def test_only_selects_the_image_and_its_ancestors(write_stack):
    plan, path = plan_of(write_stack)
    decisions = {d.key: d.action for d in decide(plan, set(), State(path), select(plan, ["b"]))}
    assert decisions["t/b"] == BUILD and decisions["t/a"] == NOT_SELECTED
    assert decisions[plan.images[0].key] == BUILD
    with pytest.raises(UserError, match="no such image or app"):
        select(plan, ["nope"])


def test_heredoc_is_refused_before_the_daemon(write_stack):
    text = STACK.replace("code: RUN echo b}", "code: \"RUN <<EOF\\necho hi\\nEOF\\n\"}")
    plan, path = plan_of(write_stack, text)
    with pytest.raises(UserError, match="heredoc"):
        check_buildable(plan, load_stack(path))


def test_new_os_base_digest_rebuilds_everything_and_says_so(write_stack):
    path = write_stack(STACK.replace("apps:", "images:\n  tools: {name: t/tools}\napps:"))
    old = build_plan(load_stack(path), base_digest="sha256:" + "1" * 64)
    state = recorded(old, path)
    new = build_plan(load_stack(path), base_digest="sha256:" + "2" * 64)
    decisions = decide(new, set(), state, select(new, None))
    assert all(d.action == BUILD for d in decisions)
    assert decisions[0].reason == "base image localhost:5000/os/busybox:latest changed"


def test_daemon_down_is_one_clear_error(write_stack, tmp_path):
    import os
    import subprocess
    import sys
    path = write_stack(STACK)
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/no-such.sock")
    result = subprocess.run([sys.executable, "-m", "layerwise", "build", str(path)], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Docker Engine" in result.stderr and "is not answering" in result.stderr
    assert "scripts/services start" in result.stderr


def test_policy_refuses_off_list_images_before_the_engine_is_asked(write_stack):
    """No engine answers at DOCKER_HOST: the refusal must come first, naming image and policy."""
    from conftest import run_cli
    nowhere = {"DOCKER_HOST": "unix:///nonexistent/docker.sock", "LAYERWISE_ALLOWED_REGISTRIES": ""}
    hub_base = write_stack(STACK.replace("base: localhost:5000/os/busybox:latest", "base: python:3.12"))
    path = hub_base
    r = run_cli("build", str(path), "--allow-registry", "localhost:5000", env=nowhere)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "python:3.12" in r.stderr and "docker.io" in r.stderr and "--allow-registry" in r.stderr

    r = run_cli("build", str(path), env={**nowhere, "LAYERWISE_ALLOWED_REGISTRIES": "localhost:5000"})
    assert r.returncode == 2 and "$LAYERWISE_ALLOWED_REGISTRIES" in r.stderr

    with_policy = STACK.replace("registry: localhost:5000", "policy: {registries: [localhost:5000]}\n"
                                "registry: localhost:5000")
    path = write_stack(with_policy.replace("code: RUN echo a}", "code: COPY --from=quay.io/o/t:1 /t /t}"))
    r = run_cli("build", str(path), env=nowhere)
    assert r.returncode == 2 and "quay.io/o/t:1" in r.stderr and f"{path}:1" in r.stderr, r.stderr

    # Unset means any registry: then it is the missing engine that stops the build.
    r = run_cli("build", str(write_stack(STACK.replace("localhost:5000/os/busybox:latest", "python:3.12"))),
                env={**nowhere, "LAYERWISE_ALLOWED_REGISTRIES": ""})
    assert r.returncode == 2 and "Docker Engine" in r.stderr and "policy" not in r.stderr


def test_built_layers_reach_normalization_as_plain_tars(tmp_path):
    """Docker 20.10 saves plain layer tars, a newer engine may save gzip blobs: both are read as
    the plain tar that normalize_layer rewrites."""
    import json

    from conftest import FakeImage, legacy_archive, sha256, write_blob
    from layerwise.family.build import _uncompressed
    from layerwise.oci.images import DockerArchiveImage, OCILayoutImage

    image = FakeImage({"a.txt": b"alpha"}, {"b.txt": b"beta" * 100})
    with DockerArchiveImage(legacy_archive(tmp_path / "saved.tar", [(["team/app:v1"], image)])) as saved:
        assert [saved.layers[i].compression for i in range(2)] == [None, None]
        for i in range(2):
            with _uncompressed(saved, i) as f:
                assert f.read() == image.tars[i]
    layout = tmp_path / "layout"
    (layout / "blobs").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    for blob in [image.manifest_raw, *image.blobs.values()]:
        write_blob(layout, blob)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": image.manifest["mediaType"], "digest": sha256(image.manifest_raw),
         "size": len(image.manifest_raw)}]}))
    with OCILayoutImage(layout) as stored:
        assert stored.layers[1].compression == "gzip"
        with _uncompressed(stored, 1) as f:
            assert f.read() == image.tars[1]
