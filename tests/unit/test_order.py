"""The order of categories (issue 16): `needs:` and `order:` in the stack file, the planner's
choice, what `plan` shows, and the bench's pure parts (fitting, goal figures), by hand."""

import json

import pytest

from conftest import run_cli
from layerwise.errors import UserError
from layerwise.measure.bench import BenchReport, Case, fit_engine_costs, ordered_stack, predict_seconds
from layerwise.plan.cost import CONTAINERD, DOCKER, PLANNED, EngineCosts, PlanCosts
from layerwise.plan.planner import build_plan, choose_order, in_order
from layerwise.plan.spec import load_stack

# One app; sizes by hint (uncompressed bytes). By hand, on a Docker Engine host (chain rule: an
# update re-sends its category and everything above):
#   stack order sec, big, code: sec 1 × (1000 + 1e6 + 10) + big 0.1 × (1e6 + 10) + code 20 × 10
#                               = 1,001,010 + 100,001 + 200 = 1,101,211 bytes a month
#   big, sec, code:             big 0.1 × 1,001,010 + sec 1 × 1010 + code 20 × 10 = 101,311
#   floor (changed content):    sec 1000 + big 0.1 × 1e6 + code 200 = 101,200
STACK = """\
registry: localhost:5000
project: t
base: localhost:5000/os/busybox:latest
{order}
categories:
  - {{name: sec,  owner: secops, changes_per_month: 1}}
  - {{name: big,  owner: ml,     changes_per_month: 0.1{big_needs}}}
  - {{name: code, owner: app,    changes_per_month: 20}}
apps:
  a:
    sec:  {{steps: RUN patch, size: 1000}}
    big:  {{steps: RUN fetch-model, size: 1000000}}
    code: {{steps: RUN build, size: 10}}
    entrypoint: [/run]
"""


def stack_text(order: str = "", big_needs: str = "") -> str:
    return STACK.format(order=order, big_needs=big_needs)


def monthly_docker_bytes(plan) -> float:
    costs = PlanCosts(plan)
    return sum(c.changes_per_month * costs.pull(("a",), DOCKER, PLANNED, c.name).bytes for c in plan.categories)


def test_the_cheapest_order_by_hand(write_stack):
    stack = load_stack(write_stack(stack_text()))
    choice = choose_order(stack)
    assert choice.declared == ("sec", "big", "code")
    assert choice.recommended == ("big", "sec", "code")
    assert monthly_docker_bytes(build_plan(stack)) == pytest.approx(1_101_211)
    assert monthly_docker_bytes(build_plan(stack, order=choice.recommended)) == pytest.approx(101_311)
    assert choice.recommended_cost < choice.declared_cost
    assert "down 1" in choice.reasons["big"] and "sec" in choice.reasons["big"]


def test_needs_bound_the_order(write_stack):
    stack = load_stack(write_stack(stack_text(big_needs=", needs: [sec]")))
    assert choose_order(stack).recommended == ("sec", "big", "code")


def test_order_optimize_and_an_explicit_order_apply(write_stack):
    optimized = build_plan(load_stack(write_stack(stack_text("order: optimize"))))
    assert [c.name for c in optimized.categories] == ["big", "sec", "code"]
    listed = build_plan(load_stack(write_stack(stack_text("order: [big, code, sec]"))))
    assert [c.name for c in listed.categories] == ["big", "code", "sec"]
    steps = [s for img in listed.images for s in img.steps]
    # Steps follow the categories; the app settings' ENTRYPOINT stays last, in the last category.
    assert [s.instruction for s in steps] == ["RUN fetch-model", "RUN build", "RUN patch", 'ENTRYPOINT ["/run"]']
    assert steps[-1].category == "sec"


def test_in_order_keeps_each_categorys_steps_in_order(write_stack):
    path = write_stack(stack_text().replace("RUN build", "[RUN one, RUN two]"))
    moved = in_order(load_stack(path), ("code", "big", "sec"))
    assert [s.instruction for s in moved.apps["a"]] == ["RUN one", "RUN two", "RUN fetch-model", "RUN patch",
                                                        'ENTRYPOINT ["/run"]']


@pytest.mark.parametrize("change,message,line", [
    (("changes_per_month: 0.1", "changes_per_month: 0.1, needs: [nope]"), "'nope' is not a declared category", 7),
    (("changes_per_month: 0.1", "changes_per_month: 0.1, needs: [code]"), "big needs code, listed after it", 7),
    (("changes_per_month: 0.1", "changes_per_month: 0.1, needs: [big]"), "cannot need itself", 7),
    (("\ncategories:", "order: [big, sec]\ncategories:"), "missing: code", 4),
    (("\ncategories:", "order: [big, sec, code, code]\ncategories:"), "listed twice: code", 4),
    (("\ncategories:", "order: sideways\ncategories:"), "order", 4),
])
def test_bad_order_keys_are_file_line_errors(write_stack, change, message, line):
    path = write_stack(stack_text().replace(*change))
    with pytest.raises(UserError) as e:
        load_stack(path)
    assert message in str(e.value) and e.value.line == line, (str(e.value), e.value.line)


def test_an_explicit_order_must_keep_the_needs(write_stack):
    path = write_stack(stack_text("order: [big, sec, code]", big_needs=", needs: [sec]"))
    with pytest.raises(UserError, match="big needs sec, so sec must come before it"):
        load_stack(path)
    result = run_cli("plan", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr and ":4:" in result.stderr


def test_plan_shows_both_orders_and_the_floor_per_host_kind(write_stack):
    path = write_stack(stack_text())
    doc = json.loads(run_cli("plan", str(path), "--json").stdout)["order"]
    assert doc["orders"] == {"stack file": ["sec", "big", "code"], "recommended": ["big", "sec", "code"]}
    assert doc["applied"] == "stack file"
    docker = doc["monthly"]["docker"]
    assert docker["stack file"]["bytes"] == 1_101_211
    assert docker["recommended"]["bytes"] == 101_311
    assert docker["floor"]["bytes"] == 101_200
    assert set(doc["monthly"]) == {"docker", "docker-containerd", "containerd"}
    # The patch of sec: the whole image (stack order) against its own layer and code's (recommended).
    assert doc["patch_of_cold_pull"]["share"]["docker"]["stack file"] == 1.0
    assert doc["patch_of_cold_pull"]["share"]["docker"]["recommended"] == pytest.approx(1010 / 1_001_010, abs=1e-6)
    text = run_cli("plan", str(path)).stdout
    assert "recommended order:" in text and "big → sec → code" in text and "big: down 1" in text
    assert "the tree in the recommended order" in text
    applied = json.loads(run_cli("plan", str(path), "--json", "--order", "optimize").stdout)
    assert applied["order"]["applied"] == "recommended"
    assert [c["name"] for c in applied["plan"]["categories"]] == ["big", "sec", "code"]


def test_fleet_files_take_the_three_host_kinds(write_stack, tmp_path):
    path = write_stack(stack_text())
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("groups:\n  a: {apps: [a], host_kind: docker-containerd}\n  b: {apps: [a], host_kind: podman}\n")
    result = run_cli("simulate", str(path), "--fleet", str(fleet), "--json")
    assert result.returncode == 2 and "fleet.yaml:3" in result.stderr and "Traceback" not in result.stderr
    fleet.write_text("groups:\n  a: {apps: [a], host_kind: docker-containerd}\n")
    doc = json.loads(run_cli("simulate", str(path), "--fleet", str(fleet), "--json").stdout)
    assert doc["groups"][0]["host_kind"] == "docker-containerd"


# ----------------------------------------------------------------------------- the bench's pure parts

def _case(pulls: int, layers: int, unpacked: int, measured: int, seconds: float, kind: str = CONTAINERD,
          inflated: int = 0) -> Case:
    """A case of `pulls` pulls, the first with `layers` equal layers (the others find all held)."""
    c = Case("c", "layered", kind, ["x"] * pulls, predicted=measured, measured=measured, layers=layers)
    c.unpacked, c.seconds = unpacked, seconds
    layer = (measured // layers, unpacked // layers, inflated // layers) if layers else None
    c.stages = (((layer,) * layers if layers else ()),) + ((),) * (pulls - 1)
    return c


def test_the_fit_finds_the_costs_it_was_given():
    bps = 8e6   # 1 MB/s
    truth = {"per_pull": 0.5, "per_layer": 0.1, "unpack_rate": 50_000_000, "inflate_rate": 20_000_000}
    # (pulls, layers, unpacked, downloaded, inflated): stored layers (none inflated) and coded ones.
    shapes = [(1, 3, 100_000_000, 2_000_000, 100_000_000), (2, 1, 5_000_000, 100, 0),
              (1, 8, 240_000_000, 9_000_000, 0), (1, 0, 0, 0, 0), (2, 5, 20_000_000, 40_000, 20_000_000),
              (1, 2, 60_000_000, 50_000_000, 0)]
    # containerd (ctr): every download at once, then the unpacks: the sum of the parts.
    cases = [_case(p, l, u, m, m / 1e6 + p * 0.5 + l * 0.1 + u / 50e6 + k / 20e6, inflated=k)
             for p, l, u, m, k in shapes]
    fitted = fit_engine_costs(cases, bps, CONTAINERD)
    # The rates are searched on a grid 0.2 % apart at the end: found to within a step or two.
    assert fitted["unpack_rate"] == pytest.approx(truth["unpack_rate"], rel=0.015)
    assert fitted["inflate_rate"] == pytest.approx(truth["inflate_rate"], rel=0.015)
    assert fitted["per_layer"] == pytest.approx(0.1, abs=0.002) and fitted["per_pull"] == pytest.approx(0.5, abs=0.02)
    predict_seconds(cases, fitted, bps, CONTAINERD)
    for c in cases:
        assert c.predicted_seconds == pytest.approx(c.seconds, rel=0.02)


def test_the_fit_sees_unpacking_overlap_the_downloads():
    """On the Docker Engine a layer unpacks while the ones above it download: seconds made by that
    pipeline are fitted back, which a sum of the parts cannot do."""
    bps = 8e6
    costs = EngineCosts(0.2, 0.05, "truth", 40e6)
    stages = [((100_000, 300_000, 0), (4_000_000, 4_000_000, 0)), ((4_000_000, 4_000_000, 0), (100_000, 300_000, 0)),
              ((2_000_000, 10_000_000, 0),) * 3, ((500_000, 500_000, 0),) * 6]
    cases = []
    for stage in stages:
        c = _case(1, len(stage), 0, sum(d for d, _, _ in stage), 0.0, DOCKER)
        c.stages, c.unpacked = (stage,), sum(u for _, u, _ in stage)
        c.seconds = costs.seconds(c.pull, 1, bps, DOCKER)
        cases.append(c)
    fitted = fit_engine_costs(cases, bps, DOCKER)
    assert fitted["unpack_rate"] == pytest.approx(40e6, rel=0.015)
    predict_seconds(cases, fitted, bps, DOCKER)
    for c in cases:
        assert c.predicted_seconds == pytest.approx(c.seconds, rel=0.02)


def test_the_fit_never_gives_a_negative_cost():
    bps = 8e6
    # Seconds that fall as layers rise: a negative per-layer cost would fit best; it is held at 0.
    cases = [_case(1, 1, 0, 0, 2.0), _case(1, 5, 0, 0, 1.0), _case(1, 9, 0, 0, 0.5)]
    fitted = fit_engine_costs(cases, bps, CONTAINERD)
    # The per-pull cost a alone, minimizing the relative errors sum(((a - t) / t)^2): a = sum(1/t) / sum(1/t^2)
    assert fitted["per_layer"] == 0 and fitted["per_pull"] == pytest.approx(3.5 / 5.25, abs=1e-4)


def test_the_fit_minimizes_relative_errors():
    bps = 8e6
    # Two cases only a per-pull cost explains: 0.1 s and 10 s. In per cent, 0.1 s weighs as much as
    # 10 s: a = (1/0.1 + 1/10) / (1/0.1^2 + 1/10^2) = 10.1 / 100.01, close to the small case.
    fitted = fit_engine_costs([_case(1, 0, 0, 0, 0.1), _case(1, 0, 0, 0, 10.0)], bps, CONTAINERD)
    assert fitted["per_pull"] == pytest.approx(10.1 / 100.01, abs=1e-4)


def test_goal_figures_by_hand():
    report = BenchReport(8e6, rates={"sec": 1.0, "code": 10.0}, orders={"stack": ["sec", "code"]})
    report.engine_costs[DOCKER] = {"per_pull": 0.0, "per_layer": 0.0, "unpack_rate": 1_000_000,
                                   "inflate_rate": 2_000_000}
    cold = _case(1, 2, 0, 1000, 5.0, DOCKER)
    cold.name = "cold a"
    sec = Case("update sec", "layered", DOCKER, ["x"], predicted=100, measured=110, floor=10, floor_unpacked=20)
    sec.seconds, sec.predicted_seconds = 2.0, 1.5
    code = Case("update code", "layered", DOCKER, ["x"], predicted=50, measured=50, floor=40, floor_unpacked=80)
    code.seconds, code.predicted_seconds = 0.5, 0.5
    # What they unpack (bytes written, of which inflated): sec's 200 B layer, code's 80 B one.
    sec.stages, code.stages = (((100, 200, 200),),), (((50, 80, 0),),)
    # The floor's own pulls: the changed layers alone.
    floor_sec = Case("floor sec", "layered", DOCKER, ["y"], predicted=12, measured=12)
    floor_sec.seconds, floor_sec.predicted_seconds = 0.25, 0.2
    floor_code = Case("floor code", "layered", DOCKER, ["y"], predicted=42, measured=42)
    floor_code.seconds, floor_code.predicted_seconds = 0.125, 0.1
    floor_sec.stages, floor_code.stages = (((10, 20, 20),),), (((40, 80, 0),),)
    report.cases = [cold, sec, code, floor_sec, floor_code]
    g = report.goals()[DOCKER]["stack"]
    assert g["monthly_bytes"] == {"measured": 110 + 10 * 50, "predicted": 100 + 10 * 50, "floor": 10 + 10 * 40}
    assert g["monthly_seconds"] == {"measured": 2.0 + 10 * 0.5, "predicted": 1.5 + 10 * 0.5,
                                    "floor_measured": 0.25 + 10 * 0.125, "floor_predicted": 0.2 + 10 * 0.1,
                                    "floor_unpack": pytest.approx(20 / 1e6 + 20 / 2e6 + 10 * 80 / 1e6),
                                    "unpack": pytest.approx(200 / 1e6 + 200 / 2e6 + 10 * 80 / 1e6)}
    assert g["patch_of_cold"] == {"category": "sec", "measured": 0.11, "predicted": 0.1}


def test_the_bench_copy_in_another_order_keeps_the_original(write_stack, tmp_path):
    path = write_stack(stack_text())
    before = path.read_text()
    copy = load_stack(ordered_stack(load_stack(path), ("big", "sec", "code"), tmp_path / "opt"))
    assert copy.project == "t-opt" and copy.order == ("big", "sec", "code")
    assert path.read_text() == before


def test_generate_follows_the_order_chosen(write_stack, tmp_path):
    path = write_stack(stack_text())
    out = tmp_path / "out"
    result = run_cli("generate", str(path), "-o", str(out), "--order", "optimize")
    assert result.returncode == 0, result.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert [c["name"] for c in plan["categories"]] == ["big", "sec", "code"]
    first = [s["instruction"] for img in plan["images"] for s in img["steps"]]
    assert first[:3] == ["RUN fetch-model", "RUN patch", "RUN build"]
