"""The cost model on a small tree computed by hand."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layerwise.plan.cost import summarize
from layerwise.plan.model import inflated_bytes
from layerwise.plan.planner import build_plan
from layerwise.plan.spec import load_stack

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
    from layerwise.plan.cost import CONTAINERD, DOCKER, FLAT, PLANNED, floor_cost, pull_cost
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


# -- each rule once (cost.py), pinned by hand ---------------------------------------------------------

from layerwise.oci.images import Image  # noqa: E402
from layerwise.oci.mediatypes import DOCKER_LAYER  # noqa: E402
from layerwise.plan.cost import (  # noqa: E402
    CONTAINERD,
    DOCKER,
    PLANNED,
    TREE,
    Ids,
    PlanCosts,
    as_built,
    chained,
    next_chain,
    predict_pulls,
    pulled,
)
from layerwise.plan.model import Step  # noqa: E402


def step(text, size, category="c"):
    return Step(instruction=text, category=category, size=size)


def test_chain_walking():
    ids = Ids()
    a = chained(ids, [("blob-a", "a", 10), ("blob-b", "b", 20)])
    b = chained(ids, [("blob-a", "a", 10), ("blob-b", "b", 20)])
    c = chained(ids, [("blob-x", "x", 10), ("blob-b", "b", 20)])
    assert [h.chain for h in a] == [h.chain for h in b]          # same blobs, same order: same chains
    assert a[1].blob == c[1].blob and a[1].chain != c[1].chain   # same blob on another parent
    assert a[1].chain == next_chain(ids, next_chain(ids, None, "blob-a"), "blob-b")


def test_blob_as_built_rule():
    ids = Ids()
    run, copy, env = step("RUN make", 100), step("COPY app/ /app/", 10), step("ENV A=1", 0)
    other = step("RUN other", 50)
    # planned: the COPY's blob is its content, whatever lies below; the RUN's depends on below.
    one, _ = as_built(ids, [(run, False), (env, False), (copy, False)])
    two, _ = as_built(ids, [(other, False), (copy, False)])
    assert len(one) == 2                                  # ENV makes no layer
    assert one[1].blob == two[1].blob and one[1].chain != two[1].chain
    assert one[0].blob != two[0].blob
    # tree (built the usual way): the COPY on another base is another blob.
    t_one, _ = as_built(ids, [(run, False), (copy, False)], TREE)
    t_two, _ = as_built(ids, [(other, False), (copy, False)], TREE)
    assert t_one[1].blob != t_two[1].blob
    # A change of the RUN: the RUN gets new content; the COPY above keeps its blob (planned)
    # but not its chain; built the usual way it gets a new blob too.
    before, _ = as_built(ids, [(run, False), (copy, False)])
    after, _ = as_built(ids, [(run, True), (copy, False)])
    assert after[0].content != before[0].content and after[0].blob != before[0].blob
    assert after[1].blob == before[1].blob and after[1].chain != before[1].chain
    t_after, _ = as_built(ids, [(run, True), (copy, False)], TREE)
    assert t_after[1].blob != t_one[1].blob


def test_bytes_a_host_pulls_by_host_kind():
    ids = Ids()
    run_a, run_b, copy = step("RUN a", 100), step("RUN b", 70), step("COPY f /f", 10)
    held, _ = as_built(ids, [(run_a, False), (copy, False)])
    wanted, _ = as_built(ids, [(run_b, False), (copy, False)])
    have = {DOCKER: {h.chain for h in held}, CONTAINERD: {h.blob for h in held}}
    # Docker Engine: another layer below, so the COPY's chain is new: 70 + 10.
    assert pulled(wanted, DOCKER, have[DOCKER]).bytes == 80
    # containerd: it holds the COPY's blob: only the new RUN.
    assert pulled(wanted, CONTAINERD, have[CONTAINERD]).bytes == 70
    # Each missing layer once, even when two images want it.
    assert pulled(wanted + wanted, CONTAINERD, have[CONTAINERD]).layers == 1


def test_plan_costs_match_the_per_app_answers(write_stack):
    path = write_stack(COPY_STACK, {"l/x": "l", "c1/x": "1", "c2/x": "2"})
    plan = build_plan(load_stack(path))
    costs = PlanCosts(plan)
    # a alone: tools 100 + lib 10 + code 1; an update of lib re-sends lib and code (Docker Engine).
    assert costs.one_app_hosts(PLANNED)["a"].bytes == 111
    assert costs.one_app_hosts(PLANNED, "lib")["a"].bytes == 11
    assert costs.pull(("a",), DOCKER, PLANNED, "lib").bytes == 11
    assert costs.pull(("a",), CONTAINERD, PLANNED, "lib").bytes == 10   # the code COPY's blob stays
    # ... but unpacks both: its snapshots are keyed by chain, and the code layer's chain changed.
    assert costs.pull(("a",), CONTAINERD, PLANNED, "lib").unpacked == 11
    # The time model's stage: lib downloaded and unpacked, then code unpacked only.
    # (Sizes from files, not measured: every byte is taken as inflated, the third figure.)
    assert costs.pull(("a",), DOCKER_CONTAINERD, PLANNED, "lib", timed=True) == Pull(10, 1, 11,
                                                                                  (((10, 10, 10), (0, 1, 1)),))
    assert costs.pull(("a",), DOCKER_CONTAINERD, PLANNED, "lib").stages == ()     # bytes alone do without
    assert costs.pull(("a",), DOCKER, PLANNED, "lib", timed=True).stages == (((10, 10, 10), (1, 1, 1)),)
    every = ((100, 100, 100), (10, 10, 10), (1, 1, 1))
    assert costs.flat("a") == {None: Pull(111, 3, 111, (every,)), "tools": Pull(111, 3, 111, (every,)),
                               "lib": Pull(11, 2, 11, (every[1:],)), "code": Pull(1, 1, 1, (every[2:],))}
    # b arrives on a host holding a: only its own code layer.
    assert costs.arrivals(("a", "b"), lambda h: h.chain)["b"] == Pull(1, 1, 1)


from layerwise.plan.cost import DOCKER_CONTAINERD, PIPELINES, EngineCosts, Pull, download_done, pull_seconds  # noqa: E402,I001


class _Listed(Image):
    """An image known by its manifest alone (as a registry lists it): predict_pulls reads no layer."""

    def __init__(self, *layers: tuple[str, int]):
        config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [d for d, _ in layers]}}).encode()
        manifest = json.dumps({"schemaVersion": 2, "layers": [{"digest": d, "size": s} for d, s in layers]})
        super().__init__("test", None, config, [(d, s, DOCKER_LAYER) for d, s in layers],
                         manifest_raw=manifest.encode())

    def _open_layer(self, i, layer, what):
        raise AssertionError("predict_pulls reads no layer")


def test_predict_pulls():
    b, t, o, one, two = (f"sha256:{c * 64}" for c in "b01e2")
    base, tools, other_base = (b, 1000), (t, 200), (o, 900)
    app1 = _Listed(base, tools, (one, 30))
    app2 = _Listed(base, tools, (two, 40))
    moved = _Listed(other_base, tools, (two, 40))      # the same blobs on another base
    # What a pull fetches besides layers: the image's manifest and config, both as stored.
    def manifest(image):
        return len(image.manifest_raw) + len(image.config_raw)

    assert manifest(app1) > 100
    # Cold: everything of both, shared layers once, plus two manifests and configs.
    # (Without uncompressed sizes, a layer's size stands for what it unpacks to, all inflated.)
    # Per image pulled, in order, its layers for the time model: app2 finds base and tools fetched.
    assert predict_pulls([app1, app2], [], DOCKER) == Pull(manifest(app1) + manifest(app2) + 1000 + 200 + 30 + 40, 4,
                                                           1000 + 200 + 30 + 40,
                                                           (((1000, 1000, 1000), (200, 200, 200), (30, 30, 30)),
                                                            ((40, 40, 40),)))
    # Warm: app2 while holding app1: only its own layer.
    assert predict_pulls([app2], [app1], DOCKER) == Pull(manifest(app2) + 40, 1, 40, (((40, 40, 40),),))
    # Another base below: the Docker Engine pulls every layer from the first miss on ...
    assert predict_pulls([moved], [app2], DOCKER).bytes == manifest(moved) + 900 + 200 + 40
    # ... containerd only the blob it lacks, but unpacks every layer above it again (chains changed).
    unpacked = {o: 9000, t: 2000, two: 400}
    # (The stage: the new base downloaded and unpacked; tools and the app unpacked only. Each
    # shrinks to under half in its blob: all of it taken as inflated.)
    unpack_only = (((900, 9000, 9000), (0, 2000, 2000), (0, 400, 400)),)
    assert predict_pulls([moved], [app2], CONTAINERD, unpacked) == Pull(manifest(moved) + 900, 1, 9000 + 2000 + 400,
                                                                        unpack_only)
    assert predict_pulls([moved], [app2], DOCKER_CONTAINERD, unpacked) == Pull(manifest(moved) + 900, 1, 11400,
                                                                               unpack_only)
    assert predict_pulls([app2], [app1], CONTAINERD, unpacked).unpacked == 400
    # A blob as large as its content (stored, not coded: a model, an archive) is not inflated.
    assert predict_pulls([app2], [app1], CONTAINERD, {two: 40}).stages == (((40, 40, 0),),)


def test_inflated_bytes_are_the_part_that_compresses():
    assert inflated_bytes(100, 100) == 0           # stored: copied, not decoded
    assert inflated_bytes(101, 100) == 0           # stored blocks cost a few bytes more than the data
    assert inflated_bytes(75, 100) == 50           # at least 50 B shrank to half or less
    assert inflated_bytes(50, 100) == 100
    assert inflated_bytes(10, 100) == 100


# -- the time model: each image pull through its engine's pipeline -------------------------------

def test_downloads_share_the_link_at_most_so_many_at_once():
    # Three at once at 100 B/s: each gets a third, all end at 3 s; the fourth then has it alone.
    assert download_done([100, 100, 100, 100], 100, 3) == pytest.approx([3, 3, 3, 4])
    # Halves until the small one ends at 2 s (the big one has 200 B left), then the big one alone;
    # a layer already held (0 bytes) is done at once.
    assert download_done([300, 100, 0], 100, 3) == pytest.approx([4, 2, 0])
    # 0: every layer at once (containerd's fetch).
    assert download_done([100, 100, 100, 100], 100, 0) == pytest.approx([4, 4, 4, 4])


def test_unpacking_overlaps_the_downloads_only_where_the_engine_does():
    # Per layer: bytes downloaded, bytes unpacked, bytes inflated; 100 B/s = 800 bit/s.
    small_first = ((100, 100, 0), (300, 300, 0))
    costs = EngineCosts(per_pull=0, per_layer=0.5, source="test", unpack_rate=100)
    # Docker Engine: the small layer is in at 2 s and unpacked (1 s + 0.5 s a layer) while the big
    # one still downloads (in at 4 s), which then takes 3.5 s: 7.5 s.
    assert pull_seconds(small_first, 800, PIPELINES[DOCKER], costs) == pytest.approx(7.5)
    # containerd (ctr): every download first (4 s), then both unpacks: 4 + 1.5 + 3.5.
    assert pull_seconds(small_first, 800, PIPELINES[CONTAINERD], costs) == pytest.approx(9)
    # Big one first: its unpack can only start at 4 s, so overlapping gains nothing.
    big_first = small_first[::-1]
    assert pull_seconds(big_first, 800, PIPELINES[DOCKER], costs) == pytest.approx(9)
    # A blob held but its chain new (containerd): unpacked, nothing downloaded; a chain held: only
    # downloaded (None), no unpack and no per-layer work.
    assert pull_seconds(((0, 50, 0),), 800, PIPELINES[CONTAINERD], costs) == pytest.approx(1.0)
    assert pull_seconds(((100, None, 0),), 800, PIPELINES[CONTAINERD], costs) == pytest.approx(1.0)


def test_coded_bytes_cost_their_decoding_beside_the_writing():
    costs = EngineCosts(per_pull=0, per_layer=0.5, source="test", unpack_rate=100, inflate_rate=50)
    # 100 B written (1 s) and decoded (2 s), plus the layer's 0.5 s; stored, only written.
    assert pull_seconds(((0, 100, 100),), 800, PIPELINES[CONTAINERD], costs) == pytest.approx(3.5)
    assert pull_seconds(((0, 100, 0),), 800, PIPELINES[CONTAINERD], costs) == pytest.approx(1.5)
    assert costs.unpack_seconds(100, 100) == pytest.approx(3.5)
    # Without an inflate rate (older bench figures, fleet files without one) the unpack rate stands
    # for both.
    assert pull_seconds(((0, 100, 100),), 800, PIPELINES[CONTAINERD],
                        EngineCosts.of({"per_pull": 0, "per_layer": 0.5, "unpack_rate": 100}, "old")) == 1.5


def test_seconds_of_a_pull_add_the_stages():
    costs = EngineCosts(per_pull=0.25, per_layer=0.5, source="test", unpack_rate=100)
    staged = Pull(410, 2, 400, (((100, 100, 0), (300, 300, 0)),))   # 10 B of manifests beside the layers
    # per pull + the manifests' 10 B at 100 B/s + the pipeline's 7.5 s
    assert costs.seconds(staged, 1, 800, DOCKER) == pytest.approx(0.25 + 0.1 + 7.5)
    # Two pulls: the second finds every layer held, and costs its per pull only.
    assert costs.seconds(staged, 2, 800, DOCKER) == pytest.approx(0.5 + 0.1 + 7.5)


@given(st.lists(st.integers(0, 10_000), max_size=12), st.integers(0, 4))
@settings(max_examples=150, derandomize=True)
def test_the_link_is_busy_until_the_last_download_ends(sizes, downloads):
    done = download_done(sizes, 1000.0, downloads)
    # However the downloads share it, the link never idles while one is left: the last ends when
    # every byte has crossed; none ends before its own bytes could have, alone on the link.
    assert max(done, default=0.0) == pytest.approx(sum(sizes) / 1000.0)
    assert all(d >= s / 1000.0 - 1e-9 for d, s in zip(done, sizes))
    # Layers start in order: with one at a time they end in order, each after the one below.
    if downloads == 1:
        ends = [d for d, s in zip(done, sizes) if s]
        assert ends == sorted(ends)
