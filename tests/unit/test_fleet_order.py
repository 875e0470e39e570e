"""The order of categories judged on the team's own fleet (issue 16): `fleet:` in the stack file,
the planner's choice over the fleet's host mix, and what `plan` shows of it; numbers by hand."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import run_cli
from layerwise.errors import UserError
from layerwise.plan import planner
from layerwise.plan.cost import order_objective
from layerwise.plan.planner import build_plan, choose_order
from layerwise.plan.spec import load_stack

# One app, two categories; sizes by hint (bytes, unpacked alike). `sec` is a 1 MB RUN changed twice a
# month, `model` a 2 MB COPY changed once. The fleet file's link and engine costs make the numbers
# round: 1 MB/s (8 Mbit), 0.5 s per pull, 0.1 s per layer unpacked, unpacking 100 MB/s.
#
# One host, by hand. Each pull: 0.5 s + its layers through the kind's pipeline, where a layer
# unpacks in bytes / 1e8 + 0.1 s.
# docker (chain rule: everything above the change is downloaded and unpacked again; 3 downloads
# share the link, each layer unpacked once it and the one below are in)
#   sec, model:  sec ×2: sec and model share the link: sec in at 2 s (unpacked by 2.11), model at 3 s,
#                        unpacked by 3.12                                   → 3.62 → 7.24
#                model ×1: 2 MB in at 2 s, unpacked by 2.12                 → 2.62 → 9.86 s
#                bytes 2 × 3e6 + 2e6 = 8,000,000
#   model, sec:  model ×1: model and the RUN above it (a new blob) share the link: sec in at 2 s,
#                        model at 3 s, unpacked by 3.12, then sec by 3.23   → 3.73
#                sec ×2: 1 MB in at 1 s, unpacked by 1.11                   → 1.61 → 3.22 → 6.95 s
#                bytes 3e6 + 2 × 1e6 = 5,000,000
# containerd (blob rule: the COPY above an updated sec keeps its blob and is only unpacked again;
# ctr downloads everything, then unpacks)
#   sec, model:  sec ×2: 1 s of download, then sec 0.11 and model 0.12     → 1.73 → 3.46
#                model ×1: 2.62                                            → 6.08 s, bytes 4,000,000
#   model, sec:  as on docker (both downloaded, 3 s, then 0.12 + 0.11):    3.73 + 3.22 = 6.95 s, 5,000,000
# So classic Docker hosts want the big, rarer model at the bottom (2.91 s less a host), containerd
# hosts the sec (0.87 s less): one classic host outweighs three containerd ones, not ten.
STACK = """\
registry: localhost:5000
project: fleetorder
base: localhost:5000/os/busybox:latest
{fleet}
categories:
  - {{name: sec,   owner: secops, changes_per_month: 2}}
  - {{name: model, owner: ml,     changes_per_month: 1}}
apps:
  a:
    sec:   {{steps: RUN patch, size: 1000000}}
    model: {{steps: COPY models/m.bin /m.bin, size: 2000000}}
"""
FILES = {"models/m.bin": "weights\n"}
FLEET = """\
bandwidth: 8Mbit
per_pull: 0.5s
per_layer: 0.1s
unpack_rate: 100MB/s
groups:
{groups}
{updates}
"""
DOCKER_SECONDS = {("sec", "model"): 9.86, ("model", "sec"): 6.95}
CONTAINERD_SECONDS = {("sec", "model"): 6.08, ("model", "sec"): 6.95}
DOCKER_BYTES = {("sec", "model"): 8_000_000, ("model", "sec"): 5_000_000}
CONTAINERD_BYTES = {("sec", "model"): 4_000_000, ("model", "sec"): 5_000_000}


def write(write_stack, tmp_path, groups: dict[str, tuple[int, str]] | None, updates: str = "",
          extra: str = "", fleet_text: str | None = None):
    """The stack file with `fleet: fleet.yaml` naming a fleet of `groups` (name -> count, host kind)."""
    if groups is None and fleet_text is None:
        return write_stack(STACK.format(fleet=extra), FILES)
    text = fleet_text if fleet_text is not None else FLEET.format(
        groups="\n".join(f"  {n}: {{count: {c}, apps: [a], host_kind: {k}}}" for n, (c, k) in groups.items()),
        updates=updates)
    (tmp_path / "fleet.yaml").write_text(text)
    return write_stack(STACK.format(fleet="fleet: fleet.yaml\n" + extra), FILES)


@pytest.mark.parametrize("groups,chosen,declared_cost,chosen_cost", [
    ({"old": (1, "docker")}, ("model", "sec"), (9.86, 8_000_000), (6.95, 5_000_000)),
    ({"k8s": (1, "containerd")}, ("sec", "model"), (6.08, 4_000_000), (6.08, 4_000_000)),
    # The mix decides: one classic host outweighs three containerd nodes, not ten.
    ({"old": (1, "docker"), "k8s": (3, "containerd")}, ("model", "sec"),
     (9.86 + 3 * 6.08, 8_000_000 + 3 * 4_000_000), (4 * 6.95, 4 * 5_000_000)),
    ({"old": (1, "docker"), "k8s": (10, "containerd")}, ("sec", "model"),
     (9.86 + 10 * 6.08, 8_000_000 + 10 * 4_000_000), (9.86 + 10 * 6.08, 8_000_000 + 10 * 4_000_000)),
])
def test_the_order_follows_the_fleets_host_mix(write_stack, tmp_path, groups, chosen, declared_cost, chosen_cost):
    stack = load_stack(write(write_stack, tmp_path, groups))
    choice = choose_order(stack)
    assert choice.declared == ("sec", "model")
    assert choice.recommended == chosen
    assert choice.declared_cost == (pytest.approx(declared_cost[0], abs=1e-5), declared_cost[1])
    assert choice.recommended_cost == (pytest.approx(chosen_cost[0], abs=1e-5), chosen_cost[1])


def test_each_order_costs_what_the_hand_says_on_each_kind(write_stack, tmp_path):
    for kind, seconds, size in (("docker", DOCKER_SECONDS, DOCKER_BYTES),
                                ("containerd", CONTAINERD_SECONDS, CONTAINERD_BYTES)):
        stack = load_stack(write(write_stack, tmp_path, {"g": (3, kind)}))
        for order in (("sec", "model"), ("model", "sec")):
            got = order_objective(build_plan(stack, order=order), stack.fleet)
            assert got == (pytest.approx(3 * seconds[order], abs=1e-5), 3 * size[order]), (kind, order)


def test_order_optimize_applies_the_fleets_order(write_stack, tmp_path):
    path = write(write_stack, tmp_path, {"old": (1, "docker")}, extra="order: optimize")
    assert [c.name for c in build_plan(load_stack(path)).categories] == ["model", "sec"]
    path = write(write_stack, tmp_path, {"k8s": (1, "containerd")}, extra="order: optimize")
    assert [c.name for c in build_plan(load_stack(path)).categories] == ["sec", "model"]


def test_the_fleets_update_rates_count(write_stack, tmp_path):
    # containerd, model changed 0.1 a month instead of 1:
    #   sec, model: sec 2 × 1.73 + model 0.1 × 2.62 = 3.722
    #   model, sec: model 0.1 × 3.73 + sec 2 × 1.61 = 3.593
    stack = load_stack(write(write_stack, tmp_path, {"k8s": (1, "containerd")}, updates="updates: {model: 0.1}"))
    choice = choose_order(stack)
    assert choice.recommended == ("model", "sec")
    assert choice.declared_cost[0] == pytest.approx(3.722, abs=1e-5)
    assert choice.recommended_cost[0] == pytest.approx(3.593, abs=1e-5)


def test_without_a_fleet_the_reference_hosts_judge(write_stack, tmp_path):
    stack = load_stack(write(write_stack, tmp_path, None))
    assert stack.fleet is None
    assert choose_order(stack).recommended == ("model", "sec")     # docker's chain rule outweighs
    doc = json.loads(run_cli("plan", str(stack.path), "--json").stdout)["order"]
    assert doc["judged_on"]["reference"] == "one host per kind, each running every app"
    assert doc["judged_on"]["host_kinds"] == ["docker", "docker-containerd", "containerd"]
    assert "fleet_monthly" not in doc
    text = run_cli("plan", str(stack.path)).stdout
    assert "judged on:           one host per kind, each running every app" in text


def test_plan_shows_the_fleet_row(write_stack, tmp_path):
    path = write(write_stack, tmp_path, {"old": (1, "docker"), "k8s": (3, "containerd")})
    doc = json.loads(run_cli("plan", str(path), "--json").stdout)["order"]
    assert doc["orders"] == {"stack file": ["sec", "model"], "recommended": ["model", "sec"]}
    assert doc["judged_on"] == {"fleet": "fleet.yaml", "groups": [
        {"name": "old", "count": 1, "host_kind": "docker", "apps": ["a"], "bandwidth_bps": 8e6},
        {"name": "k8s", "count": 3, "host_kind": "containerd", "apps": ["a"], "bandwidth_bps": 8e6}]}
    fleet = doc["fleet_monthly"]
    assert fleet["stack file"]["seconds"] == pytest.approx(9.86 + 3 * 6.08, abs=1e-3)
    assert fleet["stack file"]["bytes"] == 8_000_000 + 3 * 4_000_000
    assert fleet["recommended"]["seconds"] == pytest.approx(4 * 6.95, abs=1e-3)
    assert fleet["recommended"]["bytes"] == 4 * 5_000_000
    # The floor, per host: sec 2 × (1 MB alone: 1.61 s) + model 1 × (2 MB alone: 2.62 s).
    assert fleet["floor"]["bytes"] == 4 * 4_000_000
    assert fleet["floor"]["seconds"] == pytest.approx(4 * 5.84, abs=1e-3)
    assert {k: v["source"] for k, v in doc["fleet_engine_costs"].items()} == {"containerd": "fleet file",
                                                                             "docker": "fleet file"}
    assert set(doc["monthly"]) == {"docker", "docker-containerd", "containerd"}    # the per-kind rows stay
    text = run_cli("plan", str(path)).stdout
    assert "judged on:           the fleet fleet.yaml: old 1× docker, k8s 3× containerd" in text
    assert "fleet fleet.yaml (4 hosts)" in text
    assert "model: down 1" in text          # the reasons stay


def test_measured_engine_costs_do_not_change_the_choice(write_stack, tmp_path):
    # A fleet without engine costs of its own: the order is judged with the assumed ones, whatever
    # the bench measured since, so generate, build and bench all get one order.
    fleet = "bandwidth: 8Mbit\ngroups:\n  k8s: {count: 5, apps: [a], host_kind: containerd}\n"
    path = write(write_stack, tmp_path, None, fleet_text=fleet, extra="order: optimize")
    before = choose_order(load_stack(path))
    plan_before = json.loads(run_cli("plan", str(path), "--json").stdout)["order"]
    # Costs that would pick the other order: unpacking at 1 MB/s makes every sec update that
    # unpacks the 2 MB model above it cost 2 s more; no cost per layer.
    measured = {"per_pull": 0.5, "per_layer": 0.0, "unpack_rate": 1e6}
    stack = load_stack(path)
    as_measured = replace(stack, fleet=replace(stack.fleet, **measured))
    assert choose_order(as_measured).recommended != before.recommended
    (tmp_path / "layerwise.state.json").write_text(json.dumps(
        {"schema": "layerwise.state/v1", "base_digest": None, "images": {},
         "pull_costs": {"containerd": measured}}))
    assert choose_order(load_stack(path)) == before
    plan_after = json.loads(run_cli("plan", str(path), "--json").stdout)["order"]
    assert plan_after["orders"] == plan_before["orders"]
    result = run_cli("generate", str(path), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    generated = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert tuple(c["name"] for c in generated["categories"]) == before.recommended
    # The fleet row shows what simulate would, with the measured costs.
    assert plan_after["fleet_engine_costs"]["containerd"]["source"] == "measured"
    assert plan_after["fleet_monthly"] != plan_before["fleet_monthly"]


def test_a_large_familys_sample_keeps_the_groups_it_reaches(write_stack, tmp_path, monkeypatch):
    apps = "".join(f"  {n}:\n    sec:   {{steps: RUN patch {n}, size: 1000000}}\n"
                   f"    model: {{steps: COPY models/m.bin /m.bin, size: 2000000}}\n" for n in "abcd")
    text = STACK.format(fleet="fleet: fleet.yaml").split("apps:")[0] + "apps:\n" + apps
    (tmp_path / "fleet.yaml").write_text(FLEET.format(updates="", groups=(
        "  old: {count: 1000, apps: [b, d], host_kind: docker}\n"
        "  k8s: {count: 1, apps: [a, b, c], host_kind: containerd}")))
    stack = load_stack(write_stack(text, FILES))
    assert choose_order(stack).recommended == ("model", "sec")      # every app: the docker hosts decide
    monkeypatch.setattr(planner, "ORDER_SAMPLE_APPS", 2)           # judged on a and c: `old` is left empty
    assert choose_order(stack).recommended == ("sec", "model")


@pytest.mark.parametrize("fleet_value,fleet_text,message,where", [
    ("nowhere.yaml", None, "fleet: 'nowhere.yaml' is not there", "layerwise.yaml:4"),
    ("models", None, "fleet: 'models' is a folder", "layerwise.yaml:4"),
    ("/dev/null", None, "fleet: '/dev/null' is not a file", "layerwise.yaml:4"),
    ("[fleet.yaml]", None, "fleet: Input should be a valid string", "layerwise.yaml:4"),
    ("fleet.yaml", "groups:\n  g: {apps: [a, z]}\n", "group 'g' runs 'z', which is not an app", "fleet.yaml:2"),
    ("fleet.yaml", "groups:\n  g: {apps: [a]}\nupdates: {code: 3}\n", "updates.code: not a category",
     "fleet.yaml:3"),
    ("fleet.yaml", "groups:\n  g: {apps: [a], host_kind: podman}\n", "host_kind", "fleet.yaml:2"),
    ("fleet.yaml", "groups: [\n", "invalid YAML", "fleet.yaml:2"),
])
def test_fleet_errors_are_one_file_line_error(write_stack, tmp_path, fleet_value, fleet_text, message, where):
    if fleet_text is not None:
        (tmp_path / "fleet.yaml").write_text(fleet_text)
    path = write_stack(STACK.format(fleet=f"fleet: {fleet_value}"), FILES)
    with pytest.raises(UserError) as e:
        load_stack(path)
    assert message in str(e.value), str(e.value)
    assert f"{Path(e.value.file).name}:{e.value.line}" == where, str(e.value)
    result = run_cli("plan", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and f"{where}:" in result.stderr, result.stderr


def test_the_benchs_copies_name_the_same_fleet(tmp_path):
    """The bench plans copies of the stack elsewhere (the other order, each update): a fleet file
    outside the stack's folder is still found, so every copy is judged on the same hosts."""
    from layerwise.measure.bench import ordered_stack, updated_stack

    stack_dir = tmp_path / "stack"
    stack_dir.mkdir()
    (tmp_path / "fleet.yaml").write_text(FLEET.format(
        groups="  old: {count: 1, apps: [a], host_kind: docker}", updates=""))
    (stack_dir / "models").mkdir()
    (stack_dir / "models" / "m.bin").write_text("weights\n")
    path = stack_dir / "layerwise.yaml"
    path.write_text(STACK.format(fleet="fleet: ../fleet.yaml"))
    stack = load_stack(path)
    for copy in (ordered_stack(stack, ("model", "sec"), tmp_path / "work" / "opt"),
                 updated_stack(stack, "sec", tmp_path / "work" / "upd-sec")):
        copied = load_stack(copy)
        assert copied.fleet is not None and copied.fleet.path == (tmp_path / "fleet.yaml").resolve()
