"""Planner rules 1–6 on the seed example and on small hand-written families."""

import json

from conftest import SEED
from layerwise.plan.model import Plan
from layerwise.plan.planner import build_plan, merge_layers
from layerwise.plan.spec import load_stack

STACK_HEAD = """\
registry: localhost:5000
project: demo
base: localhost:5000/os/busybox:latest
categories:
  - {name: tools, owner: platform, merge: true}
  - {name: library, owner: platform}
  - {name: code, owner: platform, changes_per_month: 10}
"""


def test_seed_gives_the_seeds_tree():
    plan = build_plan(load_stack(SEED / "layerwise.yaml"))
    refs = {img.key: img for img in plan.images}
    assert [img.ref for img in plan.images] == [
        "localhost:5000/library/python3:latest",
        "localhost:5000/ai-tools/env-anaconda:12",
        "localhost:5000/ai-tools/env-anaconda-dust:runtime",
        "localhost:5000/ai/app1:latest",
        "localhost:5000/ai/app2:latest",
    ]
    assert refs["library/python3"].base == "localhost:5000/os/python3:bookworm"
    assert refs["ai-tools/env-anaconda"].parent == "library/python3"
    assert refs["ai-tools/env-anaconda-dust"].parent == "ai-tools/env-anaconda"
    assert refs["ai/app1"].parent == refs["ai/app2"].parent == "ai-tools/env-anaconda-dust"
    assert [img.owner for img in plan.images] == ["secops", "architects", "ml", "app-team", "app-team"]
    assert refs["ai-tools/env-anaconda-dust"].categories == ("library", "model")
    assert [img.kind for img in plan.images] == ["base", "base", "base", "app", "app"]
    assert plan.apps == {"app1": "ai/app1", "app2": "ai/app2"}
    # Fig. 7: the security category's two RUNs became one layer; its COPY stayed separate.
    security = refs["library/python3"].steps
    assert [s.keyword for s in security] == ["COPY", "RUN"]
    assert security[1].instruction == "RUN sh /opt/sec/install.sh && sec-scan --self-test"


def test_identical_text_under_different_parents_is_not_shared(write_stack):
    path = write_stack(STACK_HEAD + """\
apps:
  a: {tools: RUN apk-add gcc, library: RUN pip install x, code: RUN make a}
  b: {tools: RUN apk-add clang, library: RUN pip install x, code: RUN make b}
""")
    plan = build_plan(load_stack(path))
    # `RUN pip install x` appears under two different parents: two nodes, no shared image.
    assert len(plan.images) == 2
    assert all(img.parent is None for img in plan.images)
    libs = [s for img in plan.images for s in img.steps if s.category == "library"]
    assert len(libs) == 2


def test_shared_prefix_becomes_a_base_image(write_stack):
    path = write_stack(STACK_HEAD + """\
apps:
  a: {tools: RUN apk-add gcc, library: RUN pip install x, code: RUN make a}
  b: {tools: RUN apk-add gcc, library: RUN pip install x, code: RUN make b}
  c: {tools: RUN apk-add gcc, library: RUN pip install y, code: RUN make c}
""")
    plan = build_plan(load_stack(path))
    keys = [img.key for img in plan.images]
    tools = [k for k in keys if k.startswith("demo/tools-")]
    libs = [k for k in keys if k.startswith("demo/library-")]
    assert len(tools) == 1 and len(libs) == 1, keys
    assert plan.image(libs[0]).apps == ("a", "b")
    assert plan.image(plan.apps["c"]).parent == tools[0]
    assert plan.image(plan.apps["c"]).categories == ("library", "code")   # its own library stays with it
    # Derived names carry the fingerprint; every image has a fingerprint tag.
    tools_img = plan.image(tools[0])
    assert tools_img.key == f"demo/tools-{tools_img.fingerprint[:8]}"
    assert tools_img.fingerprint_tag == "lw-" + tools_img.fingerprint[:16]


def test_merge_joins_consecutive_runs_only_in_merge_categories(write_stack):
    path = write_stack(STACK_HEAD + """\
apps:
  a:
    tools: [RUN a1, RUN a2, "COPY f /f", RUN a3, RUN cd /x && make, RUN a5]
    library: [RUN l1, RUN l2]
    code: RUN c
""", {"f": "x"})
    stack = load_stack(path)
    merged = merge_layers(stack.apps["a"], stack.categories)
    texts = [s.instruction for s in merged]
    assert texts == ["RUN a1 && a2", "COPY f /f", "RUN a3 && (cd /x && make) && a5",
                     "RUN l1", "RUN l2", "RUN c"]


def test_owner_change_cuts_an_image(write_stack):
    path = write_stack(STACK_HEAD.replace("{name: code, owner: platform", "{name: code, owner: apps") + """\
apps:
  a: {tools: RUN t, library: RUN l, code: RUN c}
""")
    plan = build_plan(load_stack(path))
    # One app, no branches: tools+library (platform) and code (apps) are two images.
    assert [img.owner for img in plan.images] == ["platform", "apps"]
    assert plan.images[0].categories == ("tools", "library")


def test_named_node_is_a_boundary_and_keeps_its_name(write_stack):
    path = write_stack(STACK_HEAD + """\
images:
  tools: {name: team/tools, tag: "3"}
apps:
  a: {tools: RUN t, library: RUN l, code: RUN c}
""")
    plan = build_plan(load_stack(path))
    assert [img.ref for img in plan.images] == ["localhost:5000/team/tools:3", "localhost:5000/demo/a:latest"]
    assert plan.images[0].named_by == "images.tools"


def test_app_settings_and_tag(write_stack):
    path = write_stack(STACK_HEAD + """\
apps:
  a:
    tag: "1.0.0"
    code: RUN c
    env: {MODE: prod, WORKERS: 4}
    workdir: /srv
    expose: [8080]
    cmd: ["serve"]
""")
    plan = build_plan(load_stack(path))
    app = plan.image(plan.apps["a"])
    assert app.ref == "localhost:5000/demo/a:1.0.0"
    assert [s.instruction for s in app.steps] == [
        "RUN c", 'ENV MODE="prod" WORKERS="4"', "WORKDIR /srv", "EXPOSE 8080", 'CMD ["serve"]']


def test_yaml_anchors_and_equal_text_are_the_same_step(write_stack):
    path = write_stack(STACK_HEAD + """\
x-tools: &tools [RUN  apt-get install gcc, "RUN   echo  done"]
apps:
  a: {tools: *tools, code: RUN a}
  b: {tools: ["run apt-get install gcc", "RUN echo done"], code: RUN b}
""")
    plan = build_plan(load_stack(path))
    assert len(plan.images) == 3
    assert plan.images[0].steps[0].instruction == "RUN apt-get install gcc && echo done"


def test_copy_identity_includes_file_contents(write_stack):
    path = write_stack(STACK_HEAD + """\
apps:
  a: {tools: COPY src/ /src/, code: RUN a}
""", {"src/x.txt": "one"})
    before = load_stack(path).apps["a"][0]
    (path.parent / "src/x.txt").write_text("two")
    after = load_stack(path).apps["a"][0]
    assert before.instruction == after.instruction
    assert before.context_digest != after.context_digest and before.identity != after.identity
    assert before.size == 3 and before.size_source == "context"


def test_fingerprint_changes_with_content_and_propagates(write_stack):
    files = {"m/w.bin": "v1", "n/w.bin": "v1"}
    path = write_stack(STACK_HEAD + """\
apps:
  a: {tools: RUN t, library: COPY m/ /m/, code: RUN a}
  b: {tools: RUN t, library: COPY n/ /n/, code: RUN b}
  c: {tools: RUN t, library: COPY n/ /n/, code: RUN c}
""", files)

    def fingerprints():
        return {img.key.split("-")[0]: img.fingerprint for img in build_plan(load_stack(path)).images}

    before = fingerprints()
    assert set(before) == {"demo/tools", "demo/library", "demo/a", "demo/b", "demo/c"}
    (path.parent / "n/w.bin").write_text("v2")
    after = fingerprints()
    # The shared tools image and app a are untouched; the library image and its apps change.
    assert before["demo/tools"] == after["demo/tools"] and before["demo/a"] == after["demo/a"]
    assert all(before[k] != after[k] for k in ("demo/library", "demo/b", "demo/c"))


def test_plan_is_deterministic_and_round_trips_json():
    first = build_plan(load_stack(SEED / "layerwise.yaml"))
    second = build_plan(load_stack(SEED / "layerwise.yaml"))
    assert first.to_json() == second.to_json()
    again = Plan.from_dict(json.loads(first.to_json()))
    assert again.to_json() == first.to_json()


def test_app_order_does_not_change_the_plan(write_stack, tmp_path):
    body = """\
apps:
  b: {tools: RUN t, code: RUN b}
  a: {tools: RUN t, code: RUN a}
"""
    one = build_plan(load_stack(write_stack(STACK_HEAD + body))).to_json()
    swapped = body.replace("  b: {tools: RUN t, code: RUN b}\n  a: {tools: RUN t, code: RUN a}\n",
                           "  a: {tools: RUN t, code: RUN a}\n  b: {tools: RUN t, code: RUN b}\n")
    two = build_plan(load_stack(write_stack(STACK_HEAD + swapped))).to_json()
    assert one == two


def test_app_that_is_a_prefix_of_another_is_its_parent(write_stack):
    path = write_stack(STACK_HEAD + """\
apps:
  a: {tools: RUN t, code: RUN a}
  b: {tools: RUN t, code: [RUN a, RUN more]}
""")
    plan = build_plan(load_stack(path))
    assert plan.image(plan.apps["b"]).parent == plan.apps["a"]
    assert plan.image(plan.apps["a"]).kind == "app"
