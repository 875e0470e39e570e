"""Families of any size (issue 11): work that grows linearly, a quick start, and the shortcuts taken
for speed giving what the plain way gives. No wall time is measured here (bench/scale.py does)."""

import random
import subprocess
import sys
from dataclasses import fields

import pytest
import yaml
from test_golden import _scale

from conftest import SEED
from layerwise import dockerfiles
from layerwise.plan import spec
from layerwise.plan.cost import ASSUMED_COSTS, FLAT, PLANNED, PlanCosts, simulate_group, summarize
from layerwise.plan.fleet import load_fleet
from layerwise.plan.model import Step, _step_dict
from layerwise.plan.planner import build_plan
from layerwise.plan.spec import load_stack


def _work(tmp_path, apps: int) -> tuple[int, int, int]:
    """Work of the plan summary and a 10-group simulation: node visits and layers built (each a
    chain-id computation), ids made (chain, blob and content ids), and the steps of all the apps."""
    scale = _scale()
    folder = tmp_path / str(apps)
    folder.mkdir()
    (folder / "layerwise.yaml").write_text(scale.family(apps, 30))
    (folder / "fleet.yaml").write_text(scale.fleet(apps))
    plan = build_plan(load_stack(folder / "layerwise.yaml"))
    costs = PlanCosts(plan)
    summarize(plan, costs=costs)
    fleet = load_fleet(folder / "fleet.yaml", plan)
    rates = {c.name: c.changes_per_month for c in plan.categories}
    for g in fleet.groups:
        simulate_group({"flat": (costs, FLAT), "planned": (costs, PLANNED)}, g.name, g.count, g.apps,
                       g.host_kind, g.bandwidth_bps, rates, ASSUMED_COSTS)
    stack = load_stack(folder / "layerwise.yaml")
    return costs.work, len(costs.ids), sum(len(steps) for steps in stack.apps.values())


def test_cost_work_grows_linearly(tmp_path):
    small, large = _work(tmp_path, 40), _work(tmp_path, 160)
    steps_ratio = large[2] / small[2]
    assert steps_ratio == 4                  # four times the apps, each with as many steps
    # Apps × apps would make these 16 times larger; they may grow as the steps do, with a margin.
    assert large[0] / small[0] <= steps_ratio * 1.1, (small, large)
    assert large[1] / small[1] <= steps_ratio * 1.1, (small, large)


def _modules_after(*args: str) -> set[str]:
    code = ("import sys\nfrom layerwise.cli.commands import main\nsys.argv = ['layerwise', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted(sys.modules)), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    return set(result.stderr.strip().splitlines()[-1].split())


def test_help_and_plan_do_not_import_the_docker_sdk(small_seed):
    help_modules = _modules_after("--help")
    assert "layerwise.cli.commands" in help_modules
    assert not {"docker", "requests", "httpx", "rich", "pydantic"} & help_modules
    plan_modules = _modules_after("plan", str(small_seed))
    assert "layerwise.plan.planner" in plan_modules
    assert not {"docker", "requests", "httpx"} & plan_modules


@pytest.mark.parametrize("which", ["seed", "synthetic"])
def test_c_yaml_loader_reads_what_the_python_loader_reads(tmp_path, which, monkeypatch):
    path = SEED / "layerwise.yaml"
    if which == "synthetic":
        path = tmp_path / "layerwise.yaml"
        path.write_text(_scale().family(12, 14))
    assert spec._LOADER is getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    fast = spec.read_yaml(path)
    monkeypatch.setattr(spec, "_LOADER", yaml.SafeLoader)
    slow = spec.read_yaml(path)
    assert fast[0] == slow[0]
    assert (fast[1]._lines, fast[1]._text) == (slow[1]._lines, slow[1]._text)


def test_yaml_errors_are_the_python_loaders(tmp_path, monkeypatch):
    bad = {"a: [1, 2\nb: 3\n": 2, "a:\n\t- x\n": 2, "a: &x 1\nb: *y\n": 2, "a: \"\\q\"\n": 1}
    for n, (text, line) in enumerate(bad.items()):
        path = tmp_path / f"{n}.yaml"
        path.write_text(text)
        errors = []
        for loader in (getattr(yaml, "CSafeLoader", yaml.SafeLoader), yaml.SafeLoader):
            monkeypatch.setattr(spec, "_LOADER", loader)
            with pytest.raises(spec.UserError) as e:
                spec.read_yaml(path)
            errors.append(str(e.value))
        assert errors[0] == errors[1] and f"{n}.yaml:{line}: invalid YAML" in errors[0]


TEXTS = ["RUN a  b", 'ENV A="x  y" B=2', "COPY --chown=1:1 a b /c/", "ONBUILD RUN  x", "run echo hi",
         'HEALTHCHECK --interval=5s CMD curl  -f http://x/', 'CMD ["a",  "b"]', "RUN echo 'a  b' # c",
         "EXPOSE 80/tcp  443", "LABEL a=b", "USER app", "WORKDIR  /srv", "RUN a \\\n  && b", "ENV X y z"]


def test_step_texts_parsed_together_or_alone_give_the_same(monkeypatch):
    monkeypatch.setattr(dockerfiles, "_FRAGMENTS", {})
    alone = [tuple(dockerfiles.parse_instructions(t)) for t in TEXTS]
    dockerfiles.prefetch(TEXTS)
    assert sum(t in dockerfiles._FRAGMENTS for t in TEXTS) >= len(TEXTS) - 1   # all but the 2-line one
    assert [dockerfiles.parse_fragment(t) for t in TEXTS] == alone


def test_a_bad_text_among_good_ones_is_reported_where_it_is(monkeypatch):
    monkeypatch.setattr(dockerfiles, "_FRAGMENTS", {})
    dockerfiles.prefetch(["RUN a", "ENV ONLYKEY", "RUN b"])
    with pytest.raises(dockerfiles.UserError, match=r"stack.yaml:41: .*ENV"):
        dockerfiles.parse_fragment("ENV ONLYKEY", file="stack.yaml", first_line=41)
    assert dockerfiles.parse_fragment("RUN b")[0].text == "RUN b"


def _collapse_by_hand(text: str) -> str:
    out, space = [], False
    for ch in text.strip():
        if ch.isspace():
            space = True
            continue
        if space and out:
            out.append(" ")
        space = False
        out.append(ch)
    return "".join(out)


def test_collapse_whitespace_without_quotes_matches_the_character_loop():
    rng = random.Random(11)
    alphabet = ["a", "b", " ", "  ", "\t", "\n", "\u00a0", "\x1c", "\u2003", "&&", "-x"]
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert dockerfiles.collapse_whitespace(text) == _collapse_by_hand(text), repr(text)
    assert dockerfiles.collapse_whitespace("echo  'a  b'   c") == "echo 'a  b' c"   # quoted: the loop


def test_plan_json_keeps_every_step_field():
    assert set(_step_dict(Step("RUN x", "c"))) == {f.name for f in fields(Step)} | {"creates_layer"}


def test_large_families_show_the_image_tree_and_steps_on_request(tmp_path):
    from rich.console import Console

    from layerwise.cli.report import STEPS_SHOWN_UP_TO, plan_tree
    path = tmp_path / "layerwise.yaml"
    path.write_text(_scale().family(30, 12))
    plan = build_plan(load_stack(path))
    assert sum(len(i.steps) for i in plan.images) > STEPS_SHOWN_UP_TO

    def lines(**kw) -> list[str]:
        console = Console(width=1000, record=True, color_system=None, file=open("/dev/null", "w"))
        console.print(plan_tree(plan, **kw))
        return console.export_text().splitlines()

    images_only, with_steps = lines(), lines(steps=True)
    assert len(images_only) == len(plan.images) + 1 and "steps with --steps" in images_only[0]
    assert len(with_steps) == len(plan.images) + 1 + sum(len(i.steps) for i in plan.images)
    assert all(f"{img.key}:{img.tag}" in "\n".join(images_only) for img in plan.images)


def _random_json(rng: random.Random, depth: int = 0):
    kinds = ["str", "int", "float", "none", "bool"] + (["dict", "list", "tuple"] * 2 if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        return "".join(rng.choice(["a", "é", "\"", "\\", "\n", "\u2028", "z", " ", "\x01", "😀"])
                       for _ in range(rng.randint(0, 6)))
    if kind == "int":
        return rng.choice([0, -1, 7, 2**70, -(2**40)])
    if kind == "float":
        return rng.choice([0.0, -0.0, 1.5, 1e300, 3.14159, 1e-7])
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "dict":
        return {_random_json(rng, 9) if rng.random() < 0.1 else f"k{rng.randint(0, 9)}": _random_json(rng, depth + 1)
                for _ in range(rng.randint(0, 4))}
    items = [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return items if kind == "list" else tuple(items)


def test_dumps_json_writes_what_json_dumps_writes():
    import json

    from layerwise.jsonout import dumps_json
    rng = random.Random(5)
    for _ in range(400):
        doc = {"x": _random_json(rng)}
        for ascii_only in (True, False):
            try:
                expected = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=ascii_only)
            except TypeError:       # keys json cannot sort (mixed types): dumps_json must fail alike
                with pytest.raises(TypeError):
                    dumps_json(doc, ensure_ascii=ascii_only)
                continue
            assert dumps_json(doc, ensure_ascii=ascii_only) == expected
    for odd in ({"n": float("nan")}, {1: 2, 3: [float("inf")]}):     # left to json.dumps itself
        assert dumps_json(odd) == json.dumps(odd, indent=2, sort_keys=True)
