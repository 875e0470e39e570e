"""The cost model on a small tree computed by hand."""

import pytest

from layerwise.cost import summarize
from layerwise.planner import build_plan
from layerwise.spec import load_stack

STACK = """\
registry: localhost:5000
project: t
base: localhost:5000/os/busybox:latest
categories:
  - {name: tools, owner: p, changes_per_month: 1}
  - {name: lib,   owner: p, changes_per_month: 2}
  - {name: code,  owner: p, changes_per_month: 10}
apps:
  a: {tools: {steps: RUN t, size: 100}, lib: {steps: RUN la, size: 10}, code: {steps: RUN ca, size: 1}}
  b: {tools: {steps: RUN t, size: 100}, lib: {steps: RUN lb, size: 20}, code: {steps: RUN cb, size: 2}}
"""


@pytest.fixture
def summary(write_stack):
    return summarize(build_plan(load_stack(write_stack(STACK))))


def rows(summary, name):
    sc = next(s for s in summary.scenarios if s.name == name)
    return sc, {r.label: (r.planned, r.flat, r.floor) for r in sc.rows}


def test_all_apps_on_one_host(summary):
    sc, r = rows(summary, "all apps on one host")
    # Tree: tools (100) shared; a adds 10 + 1, b adds 20 + 2.
    assert r["cold pull"] == (133, 233, 133)
    assert r["add one app (others present)"] == ((11 + 22) // 2, (111 + 122) // 2, (11 + 22) // 2)
    assert r["update tools"] == (133, 233, 100)
    assert r["update lib"] == (33, 33, 30)
    assert r["update code"] == (3, 3, 3)
    assert sc.monthly("planned") == 133 * 1 + 33 * 2 + 3 * 10
    assert sc.monthly("flat") == 233 * 1 + 33 * 2 + 3 * 10
    assert sc.monthly("floor") == 100 * 1 + 30 * 2 + 3 * 10


def test_one_host_per_app_shares_nothing_across_hosts(summary):
    _, r = rows(summary, "one host per app")
    assert r["cold pull"] == (233, 233, 233)
    assert r["update tools"] == (233, 233, 200)
    assert r["update code"] == (3, 3, 3)


def test_size_sources_are_counted(summary):
    assert summary.size_sources == {"hint": 5}
    assert summary.unknown_layers == 0


COPY_STACK = """\
registry: localhost:5000
project: t
base: localhost:5000/os/busybox:latest
categories:
  - {name: tools, owner: p, changes_per_month: 1}
  - {name: lib,   owner: p}
  - {name: code,  owner: p}
apps:
  a: {tools: {steps: RUN t, size: 100}, lib: {steps: COPY l/ /l/, size: 10}, code: {steps: COPY c1/ /c/, size: 1}}
  b: {tools: {steps: RUN t, size: 100}, lib: {steps: COPY l/ /l/, size: 10}, code: {steps: COPY c2/ /c/, size: 1}}
"""


def test_host_kinds_differ_when_a_lower_layer_changes(write_stack):
    from layerwise.cost import CONTAINERD, DOCKER, FLAT, PLANNED, floor_cost, pull_cost
    path = write_stack(COPY_STACK, {"l/x": "l", "c1/x": "1", "c2/x": "2"})
    plan = build_plan(load_stack(path))
    both = ("a", "b")
    # Docker Engine: everything above the changed RUN has a new chain.
    assert pull_cost(plan, both, DOCKER, PLANNED, updated="tools").bytes == 100 + 10 + 1 + 1
    # containerd: the reproducible COPY layers above it keep their blobs; only the change moves.
    assert pull_cost(plan, both, CONTAINERD, PLANNED, updated="tools").bytes == 100
    assert floor_cost(plan, both, updated="tools") == 100
    # Flat builds are not reproducible: both kinds pull every rebuilt layer of both apps.
    assert pull_cost(plan, both, DOCKER, FLAT, updated="tools").bytes == 222
    assert pull_cost(plan, both, CONTAINERD, FLAT, updated="tools").bytes == 222
    # Cold and arrival: the shared image is pulled once in the plan, twice flat.
    assert pull_cost(plan, both, CONTAINERD, PLANNED).bytes == 112
    assert pull_cost(plan, both, DOCKER, FLAT).bytes == 222
    arrival = pull_cost(plan, both, DOCKER, PLANNED, arriving="b")
    assert (arrival.bytes, arrival.layers) == (1, 1)
