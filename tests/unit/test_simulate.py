"""The fleet file and `layerwise simulate`: parsing, errors, and figures computed by hand."""

import json

import pytest

from conftest import run_cli

STACK = """\
registry: localhost:5000
project: t
base: localhost:5000/os/busybox:latest
categories:
  - {name: tools, owner: p, changes_per_month: 1}
  - {name: code,  owner: p, changes_per_month: 10}
apps:
  a: {tools: {steps: RUN t, size: 1000000}, code: {steps: RUN a, size: 1000}}
  b: {tools: {steps: RUN t, size: 1000000}, code: {steps: RUN b, size: 2000}}
"""

FLEET = """\
bandwidth: 8Mbit
per_pull: 0.5s
per_layer: 100ms
unpack_rate: 2MB/s
groups:
  both: {count: 3, apps: [a, b]}
  only-a: {count: 2, apps: [a], host_kind: containerd}
"""


@pytest.fixture
def files(tmp_path):
    (tmp_path / "layerwise.yaml").write_text(STACK)
    (tmp_path / "fleet.yaml").write_text(FLEET)
    return tmp_path


def simulate(files, *extra):
    result = run_cli("simulate", str(files / "layerwise.yaml"), "--fleet", str(files / "fleet.yaml"), *extra)
    assert "Traceback" not in result.stderr
    return result


def test_simulate_by_hand(files):
    result = simulate(files, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    both, only_a = doc["groups"]
    # Cold, host with a and b: planned pulls tools once (1 MB) + 1 kB + 2 kB; flat pulls tools twice.
    assert both["cold"]["planned"]["bytes"] == 1_003_000
    assert both["cold"]["flat"]["bytes"] == 2_003_000
    # 8 Mbit/s = 1 MB/s; 3 layers at 0.1 s; 2 pulls at 0.5 s; 1.003 MB unpacked at 2 MB/s.
    assert both["cold"]["planned"]["seconds"] == pytest.approx(1.003 + 0.3 + 1.0 + 1.003 / 2, abs=1e-3)
    assert both["cold"]["planned"]["unpacked"] == 1_003_000
    # The containerd host with a alone, on an update of tools: the tools RUN and the code RUN above
    # it (a RUN follows what is below it) are downloaded and unpacked; 1 pull.
    assert only_a["monthly"]["planned"]["seconds"] == pytest.approx(
        1 * (1.001 + 0.2 + 0.5 + 1.001 / 2) + 10 * (0.001 + 0.1 + 0.5 + 0.001 / 2), abs=1e-3)
    # The floor's seconds: the changed content alone, through the same model.
    assert only_a["floor"]["monthly_seconds"] == pytest.approx(
        1 * (1.0 + 0.1 + 0.5 + 1.0 / 2) + 10 * (0.001 + 0.1 + 0.5 + 0.001 / 2), abs=1e-3)
    # Monthly: tools once (everything re-pulled: RUN layers depend on what is below) + code 10×.
    assert both["monthly"]["planned"]["bytes"] == 1 * 1_003_000 + 10 * 3000
    assert both["monthly"]["flat"]["bytes"] == 1 * 2_003_000 + 10 * 3000
    assert {k: both["floor"][k] for k in ("cold", "monthly")} == {"cold": 1_003_000,
                                                                  "monthly": 1 * 1_000_000 + 10 * 3000}
    assert only_a["host_kind"] == "containerd" and only_a["count"] == 2
    assert doc["fleet"]["cold"]["planned"] == 3 * 1_003_000 + 2 * 1_001_000
    assert both["engine_costs"] == {"per_pull": 0.5, "per_layer": 0.1, "unpack_rate": 2e6, "inflate_rate": 0.0,
                                    "source": "fleet file"}


def test_rates_can_be_overridden_and_host_kind_forced(files):
    (files / "fleet.yaml").write_text(FLEET + "updates: {code: 0, tools: 2}\n")
    doc = json.loads(simulate(files, "--json", "--host-kind", "docker").stdout)
    assert doc["groups"][0]["monthly"]["planned"]["bytes"] == 2 * 1_003_000
    assert {g["host_kind"] for g in doc["groups"]} == {"docker"}


def test_table_and_chart(files, tmp_path):
    chart = tmp_path / "chart.svg"
    result = simulate(files, "--chart", str(chart))
    assert result.returncode == 0, result.stderr
    assert "whole fleet" in result.stdout and "floor" in result.stdout
    import xml.dom.minidom
    svg = xml.dom.minidom.parse(str(chart))
    assert len(svg.getElementsByTagName("rect")) >= 3 * 2   # 3 series × 2 groups


def test_hand_made_tree_is_compared(files):
    # A hand-made tree that shares nothing: each app its own image from the base.
    other = files / "other"
    other.mkdir()
    (other / "layerwise.yaml").write_text(STACK.replace("RUN t, size: 1000000}, code: {steps: RUN b",
                                                        "RUN t2, size: 1000000}, code: {steps: RUN b"))
    doc = json.loads(simulate(files, "--json", "--compare", str(other / "layerwise.yaml")).stdout)
    assert doc["groups"][0]["cold"]["hand-made"]["bytes"] == 2_003_000


FLEET_ERRORS = {
    "unknown app": ("groups:\n  g: {apps: [a, zz]}\n", 2, "'zz', which is not an app"),
    "negative count": ("groups:\n  g: {count: -3, apps: [a]}\n", 2, "greater than or equal to 0"),
    "bad bandwidth unit": ("bandwidth: 10 furlongs\ngroups:\n  g: {apps: [a]}\n", 1, "bandwidth"),
    "bad group bandwidth": ("groups:\n  g: {apps: [a], bandwidth: fast}\n", 2, "not a bandwidth"),
    "unknown category": ("groups:\n  g: {apps: [a]}\nupdates: {nope: 1}\n", 3, "not a category"),
    "unknown key": ("groups:\n  g: {apps: [a], size: 3}\n", 2, "unknown key 'groups.g.size'"),
    "bad duration": ("per_layer: soon\ngroups:\n  g: {apps: [a]}\n", 1, "not a duration"),
    "no groups": ("bandwidth: 1Gbit\n", 1, "missing key 'groups'"),
}


@pytest.mark.parametrize("name", sorted(FLEET_ERRORS))
def test_fleet_errors(files, name):
    text, line, message = FLEET_ERRORS[name]
    (files / "fleet.yaml").write_text(text)
    result = simulate(files)
    assert result.returncode == 2, result.stdout
    assert f"fleet.yaml:{line}: " in result.stderr and message in result.stderr, result.stderr


def test_an_inflate_rate_adds_the_decoding_of_unmeasured_layers(files):
    # Sizes from hints, not measured: every byte is taken as coded, decoded at 4 MB/s beside being
    # written at 2 MB/s.
    (files / "fleet.yaml").write_text(FLEET.replace("unpack_rate: 2MB/s", "unpack_rate: 2MB/s\ninflate_rate: 4MB/s"))
    doc = json.loads(simulate(files, "--json").stdout)
    both = doc["groups"][0]
    assert both["cold"]["planned"]["seconds"] == pytest.approx(1.003 + 0.3 + 1.0 + 1.003 / 2 + 1.003 / 4, abs=1e-3)
    assert both["engine_costs"]["inflate_rate"] == 4e6
    (files / "fleet.yaml").write_text(FLEET + "inflate_rate: 0MB/s\n")
    result = simulate(files)
    assert result.returncode == 2 and "fleet.yaml:" in result.stderr
    assert "inflate_rate must be a rate above zero" in result.stderr
