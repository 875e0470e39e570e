"""Properties (hypothesis) of the pure parts: Dockerfile normalization, the planner, the cost model,
and fuzzing of the stack-file loader and the Dockerfile reader. Examples are bounded and derandomized
(no example database), so every run tries the same inputs and CI stays repeatable."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from layerwise.dockerfiles import parse_instructions, render_dockerfile
from layerwise.errors import UserError
from layerwise.plan.cost import CONTAINERD, DOCKER, FLAT, PLANNED, PlanCosts
from layerwise.plan.model import Category, Step, sha256_text
from layerwise.plan.planner import build_plan, merge_layers
from layerwise.plan.spec import Stack, load_stack

_QUIET = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("layerwise", max_examples=150, deadline=None, derandomize=True, database=None,
                          suppress_health_check=_QUIET)
# A longer, random hunt by hand: LAYERWISE_HYPOTHESIS=hunt .venv/bin/python -m pytest tests/unit/test_properties.py
settings.register_profile("hunt", max_examples=3000, deadline=None, database=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("LAYERWISE_HYPOTHESIS", "layerwise"))

# ----------------------------------------------------------------------------- Dockerfile text

WORD = st.text(alphabet="abcxyz019_-./:=@%+,", min_size=1, max_size=8)
# Words with what makes normalization work: quotes, escapes, variables, runs of blanks.
RICH = st.text(alphabet="ab9_-./=$ \t'\"\\{}#&|;", min_size=1, max_size=12).filter(str.strip)
PATH = st.text(alphabet="abc019_-./", min_size=1, max_size=10).filter(lambda p: p.strip("./") != "")


def _words(strategy, lo=1, hi=4):
    return st.lists(strategy, min_size=lo, max_size=hi).map(" ".join)


def _json_array(items: list[str]) -> str:
    import json
    return json.dumps(items)


INSTRUCTION = st.one_of(
    st.builds(lambda w: f"RUN {w}", _words(st.one_of(WORD, RICH))),
    st.builds(lambda w: f"RUN {_json_array(w)}", st.lists(st.one_of(WORD, RICH), min_size=1, max_size=3)),
    st.builds(lambda f, s, d: f"COPY {f}{' '.join(s)} {d}",
              st.sampled_from(["", "--chown=1:2 ", "--chmod=644 ", "--link "]),
              st.lists(PATH, min_size=1, max_size=3), PATH.map(lambda p: "/" + p)),
    st.builds(lambda k, v: f"ENV {k}={v}", WORD.filter(str.isidentifier), WORD),
    st.builds(lambda k, v: f'ENV {k}="{v}"', WORD.filter(str.isidentifier),
              st.text(alphabet="ab9 -./", min_size=1, max_size=10)),
    st.builds(lambda k, v: f"LABEL {k}={v}", WORD.filter(str.isidentifier), WORD),
    st.builds(lambda w: f"WORKDIR /{w}", PATH),
    st.builds(lambda w: f"USER {w}", WORD),
    st.builds(lambda p: "EXPOSE " + " ".join(p), st.lists(st.sampled_from(["80", "443/tcp", "53/udp"]),
                                                          min_size=1, max_size=3)),
    st.builds(lambda w: f"CMD {_json_array(w)}", st.lists(st.one_of(WORD, RICH), max_size=3)),
    st.builds(lambda w: f"ENTRYPOINT {w}", _words(WORD)),
    st.builds(lambda k, v: f"ARG {k}={v}", WORD.filter(str.isidentifier), WORD),
    st.builds(lambda w: f"VOLUME {w}", PATH.map(lambda p: "/" + p)),
    st.builds(lambda w: f"STOPSIGNAL {w}", st.sampled_from(["SIGTERM", "9", "SIGINT"])),
    st.builds(lambda w: f"ONBUILD RUN {w}", _words(WORD)),
    st.builds(lambda w: f"HEALTHCHECK --interval=5s CMD {w}", _words(WORD)),
)


def test_a_step_ending_in_a_backslash_is_refused():
    """Found by hypothesis: `RUN 0 \\ \\` normalized to `RUN 0 \\`, which, written into a Dockerfile,
    joined the next instruction to the RUN (the plan's two steps, the builder's one)."""
    with pytest.raises(UserError, match="ends in a backslash"):
        parse_instructions("RUN 0 \\ \\")


def _blank(text: str, rng: random.Random) -> str:
    """The same instruction written differently: keyword case and blanks between words."""
    keyword, _, rest = text.partition(" ")
    keyword = "".join(c.lower() if rng.random() < 0.5 else c for c in keyword)
    return keyword + " " * rng.randint(1, 3) + rest


@given(st.lists(INSTRUCTION, min_size=1, max_size=8), st.integers(0, 2 ** 16))
def test_rendered_steps_parse_back_to_the_same_steps(texts, seed):
    """parse → render (as `generate` writes a Dockerfile) → parse gives the same normalized steps,
    and normalizing is idempotent: a normalized text is its own normal form."""
    rng = random.Random(seed)
    steps = []
    for text in texts:
        try:
            steps += parse_instructions(_blank(text, rng))
        except UserError:     # `RUN \` alone, say: refused, rightly; the property is about the rest
            assume(False)
    groups = [("code" if i % 3 else "config", s.text) for i, s in enumerate(steps)]
    rendered = render_dockerfile("localhost:5000/os/busybox:latest", groups, ["a header", "line two"],
                                 ["ARG SOURCE_DATE_EPOCH=946684800"])
    back = parse_instructions(rendered)
    assert [i.keyword for i in back[:2]] == ["FROM", "ARG"]
    assert [i.text for i in back[2:]] == [s.text for s in steps]
    assert [parse_instructions(s.text)[0].text for s in steps] == [s.text for s in steps]


@given(st.text(max_size=60))
@example("\n0")          # found by hypothesis: a newline made the rest an instruction
@example("\x00")         # found by hypothesis: the parser stopped reading at a NUL
def test_a_header_line_cannot_add_an_instruction(header):
    """Header lines are comments whatever they hold (a stack file's name or an owner with a newline)."""
    rendered = render_dockerfile("busybox", [("code", "RUN true")], [header, "x"])
    assert [i.keyword for i in parse_instructions(rendered)] == ["FROM", "RUN"]


# ----------------------------------------------------------------------------- fuzzing the readers

@given(st.binary(max_size=300))
@example(b"RUN \xff")
@example(b"FROM a\nONBUILD")
@example(b"\\")                 # found by hypothesis: an AttributeError, the parser's command had no keyword
def test_the_dockerfile_reader_gives_instructions_or_a_user_error(data):
    text = data.decode("utf-8", "replace")
    try:
        parse_instructions(text, file="Dockerfile")
    except UserError:
        pass


def test_a_nul_character_is_refused_not_the_end_of_the_file():
    """The parser reads C strings: `RUN a<NUL>` used to parse as `RUN a`, dropping everything after."""
    with pytest.raises(UserError) as e:
        parse_instructions("FROM a\nRUN a\x00\nRUN rm -rf /data\n", file="Dockerfile")
    assert str(e.value).startswith("Dockerfile:2: a NUL character")


DOCKERFILE_TEXT = st.lists(st.one_of(INSTRUCTION, st.text(alphabet="RUNCOPYFROMenv \\\n\t#=[]\"'<-", max_size=30)),
                           max_size=6).map("\n".join)


@given(DOCKERFILE_TEXT)
def test_dockerfile_like_text_gives_instructions_or_a_user_error(text):
    try:
        parse_instructions(text, file="Dockerfile")
    except UserError:
        pass


STACK_HEAD = """registry: localhost:5000
project: fuzz
base: localhost:5000/os/busybox:latest
categories:
  - {name: code, owner: app-team, merge: true}
  - {name: config, owner: app-team}
"""


def _loads_or_refuses(folder: Path, data: bytes) -> None:
    path = folder / "layerwise.yaml"
    path.write_bytes(data)
    try:
        load_stack(path)
    except UserError as e:
        assert "\n" not in str(e)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "app.txt").write_text("x")
    return folder


@given(st.binary(max_size=400))
def test_stack_loader_on_arbitrary_bytes(fuzz_dir, data):
    _loads_or_refuses(fuzz_dir, data)


YAML_BITS = st.sampled_from([
    "apps:", "  a:", "  b:", "    code:", "    config:", "      - RUN echo hi", "      - COPY app.txt /x",
    "    code: RUN a", "    tag: v1", "    env: {A: 1}", "    expose: [80]", "    entrypoint: [a, b]",
    "    code: {steps: RUN x, size: 5MB}", "    code: {steps: [], size: -1}", "images:", "  code: {name: a/b}",
    "  config: {name: ../x}", "x-a: &a {code: RUN z}", "  c: *a", "  d: *nope", "policy: {registries: []}",
    "    code: !!binary aGk=", "    code: 2001-02-03", "  1: {code: RUN a}", "    code: [[RUN a]]",
    "    user: ~", "    cmd: 'a\tb'", "    code: \"RUN a \\\\\n b\"", "  E: {code: RUN e}", "    <<: *a",
    "    code: FROM x", "    code: COPY ../../etc/passwd /x", "    code: COPY /abs /x", "    code: 'RUN a\\\\'",
    "? [a]", ": b", "---", "...", "%YAML 1.1", "&x", "*x", "- -", "{", "]", "\t", "#", "'", '"',
])


@given(st.lists(YAML_BITS, max_size=14))
def test_stack_loader_on_yaml_like_text(fuzz_dir, bits):
    _loads_or_refuses(fuzz_dir, (STACK_HEAD + "\n".join(bits) + "\n").encode())


@given(st.lists(st.sampled_from(["RUN echo a", "RUN a && b", "COPY app.txt /app.txt", "ENV A=1",
                                 "RUN x \\\n  y", "RUN ['a']", "ONBUILD RUN x", "FROM y", "COPY", "RUN",
                                 "HEALTHCHECK NONE", "SHELL [\"/bin/bash\", \"-c\"]", "RUN <<EOF\nx\nEOF"]),
                min_size=1, max_size=5))
def test_stack_loader_on_step_texts(fuzz_dir, texts):
    body = "".join(f"      - {_json_array([t])[1:-1]}\n" for t in texts)
    _loads_or_refuses(fuzz_dir, (STACK_HEAD + "apps:\n  a:\n    code:\n" + body + "  b: {code: RUN b}\n").encode())


# ----------------------------------------------------------------------------- the planner

CATEGORIES = (Category("security", "secops", 1, True), Category("tools", "platform", 0.5, True),
              Category("library", "ml", 2), Category("code", "app-team", 20), Category("config", "app-team", 10))
ONE_OWNER = tuple(Category(c.name, "team", c.changes_per_month, c.merge) for c in CATEGORIES)


def _size(text: str) -> int:
    """One size per step text: a layer's size follows from what made it."""
    return 1 + int(sha256_text(text)[:6], 16)


@st.composite
def families(draw, categories=CATEGORIES):
    """Apps drawn from a few variants per category, so they share prefixes as real families do;
    each step has a size (COPY: from its files, RUN: a hint)."""
    n_apps = draw(st.integers(2, 7))
    apps: dict[str, tuple[Step, ...]] = {}
    for a in range(n_apps):
        steps: list[Step] = []
        for cat in categories:
            variant = draw(st.integers(0, 3))   # 0: the app has no step of this category
            for k in range(draw(st.integers(1, 2)) if variant else 0):
                kind = draw(st.sampled_from(["RUN", "RUN", "COPY", "ENV"]))
                if kind == "RUN":
                    text = f"RUN {cat.name}-{variant}-{k}"
                    steps.append(Step(text, cat.name, size=_size(text), size_source="hint"))
                elif kind == "COPY":
                    text = f"COPY {cat.name}{variant}/ /opt/{cat.name}{k}/"
                    steps.append(Step(text, cat.name, context_digest=f"sha256:{cat.name}{variant}{k}",
                                      size=_size(text), size_source="context"))
                else:
                    steps.append(Step(f"ENV {cat.name.upper()}_{k}={variant}", cat.name, size=0, size_source="empty"))
        assume(steps)
        apps[f"app{a}"] = tuple(steps)
    chains = {tuple(s.identity for s in merge_layers(steps, categories)) for steps in apps.values()}
    assume(len(chains) == len(apps))      # identical apps are refused, rightly
    return Stack(path=Path("/nowhere/layerwise.yaml"), registry="localhost:5000", project="prop",
                 base="localhost:5000/os/busybox:latest", categories=categories, names={}, apps=apps,
                 app_tags={a: "latest" for a in apps})


def _with_apps(stack: Stack, order: list[str]) -> Stack:
    from dataclasses import replace
    return replace(stack, apps={a: stack.apps[a] for a in order}, app_tags={a: "latest" for a in order})


@given(families(), st.randoms(use_true_random=False))
def test_plan_keeps_every_chain_and_does_not_depend_on_app_order(stack, rng):
    plan = build_plan(stack)
    for app, steps in stack.apps.items():
        chain = [s for img in plan.chain(plan.apps[app]) for s in img.steps]
        assert chain == merge_layers(steps, stack.categories)
    shuffled = list(stack.apps)
    rng.shuffle(shuffled)
    assert build_plan(_with_apps(stack, shuffled)).to_json() == plan.to_json()


@given(families(ONE_OWNER))
def test_every_base_serves_two_apps_or_more(stack):
    """With one owner and no names, a base exists only where apps share steps."""
    plan = build_plan(stack)
    for img in plan.images:
        if img.kind == "base":
            assert len(img.apps) >= 2, img.key


@given(families())
def test_a_base_serving_one_app_is_cut_by_an_owner_change(stack):
    """With owners (DESIGN rule 4), a base of one app can only end where the next step's owner differs."""
    plan = build_plan(stack)
    owner = {c.name: c.owner for c in stack.categories}
    for img in plan.images:
        if img.kind == "base" and len(img.apps) < 2:
            child = plan.children(img.key)
            assert len(child) == 1 and owner[child[0].steps[0].category] != owner[img.steps[-1].category]


# ----------------------------------------------------------------------------- the cost model

@given(families(), st.data())
def test_floor_planned_flat_and_the_two_host_rules(stack, data):
    plan = build_plan(stack)
    costs = PlanCosts(plan)
    apps = tuple(sorted(data.draw(st.sets(st.sampled_from(sorted(plan.apps)), min_size=1))))
    for updated in (None, *(c.name for c in stack.categories)):
        floor = costs.floor(apps, updated)
        chain = costs.pull(apps, DOCKER, PLANNED, updated).bytes
        blob = costs.pull(apps, CONTAINERD, PLANNED, updated).bytes
        flat = costs.pull(apps, DOCKER, FLAT, updated).bytes
        assert floor <= blob <= chain <= flat, (updated, apps)


# Structure-aware: a valid stack file with one part replaced by any YAML value.
VALID_STACK = {
    "registry": "localhost:5000", "project": "fuzz", "base": "localhost:5000/os/busybox:latest",
    "categories": [{"name": "code", "owner": "app-team", "merge": True}, {"name": "config", "owner": "ops"}],
    "images": {"code": {"name": "fuzz/shared", "tag": "1"}},
    "apps": {"a": {"code": ["RUN echo a", "COPY app.txt /app.txt"], "config": {"steps": "ENV A=1", "size": "1kB"},
                   "env": {"X": 1}, "expose": [80], "entrypoint": ["/bin/sh"], "tag": "v1"},
             "b": {"code": ["RUN echo a", "COPY app.txt /app.txt"], "config": "ENV A=2", "workdir": "/srv"}},
}
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["RUN x", "COPY app.txt /x", "FROM y", "../x", "/abs",
                                                           "1kB", "-1", "2001-02-03", "x-y", "", " "]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.one_of(st.text(max_size=8), st.integers()),
                                                                       inner, max_size=4)), max_leaves=12)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


ALL_PATHS = [p for p in _paths(VALID_STACK) if p]


@given(st.sampled_from(ALL_PATHS), VALUES)
@example(("apps", "a", "code"), {"": None, 0: None})   # found by hypothesis: sorting keys of mixed types
def test_stack_loader_on_a_valid_stack_with_one_part_replaced(fuzz_dir, where, value):
    import copy

    import yaml
    doc = copy.deepcopy(VALID_STACK)
    target = doc
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    _loads_or_refuses(fuzz_dir, yaml.safe_dump(doc, allow_unicode=True).encode())


@given(st.sampled_from(ALL_PATHS))
def test_stack_loader_on_a_valid_stack_with_one_part_left_out(fuzz_dir, where):
    import copy

    import yaml
    doc = copy.deepcopy(VALID_STACK)
    target = doc
    for key in where[:-1]:
        target = target[key]
    del target[where[-1]]
    _loads_or_refuses(fuzz_dir, yaml.safe_dump(doc).encode())


def _replaced(doc, where, value):
    import copy
    doc = copy.deepcopy(doc)
    target = doc
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    return doc


VALID_FLEET = {"bandwidth": "100Mbit", "host_kind": "docker", "per_pull": "0.3s", "per_layer": "50ms",
               "groups": {"g": {"count": 3, "apps": ["a", "b"], "bandwidth": "1Gbit", "host_kind": "containerd"}},
               "updates": {"code": 30}}


@pytest.fixture(scope="module")
def fuzz_plan(fuzz_dir):
    import yaml
    (fuzz_dir / "layerwise.yaml").write_text(yaml.safe_dump(VALID_STACK))
    return build_plan(load_stack(fuzz_dir / "layerwise.yaml"))


@given(st.sampled_from([p for p in _paths(VALID_FLEET) if p]), VALUES)
@example(("groups",), {"\n": None})      # found by hypothesis: a key with a newline made the error two lines
def test_fleet_loader_on_a_valid_fleet_with_one_part_replaced(fuzz_dir, fuzz_plan, where, value):
    import yaml

    from layerwise.plan.fleet import load_fleet
    path = fuzz_dir / "fleet.yaml"
    path.write_text(yaml.safe_dump(_replaced(VALID_FLEET, where, value), allow_unicode=True))
    try:
        load_fleet(path, fuzz_plan)
    except UserError as e:
        assert "\n" not in str(e)


VALID_IMPORT = {"schema": "layerwise.import/v1", "registry": "localhost:5000", "project": "p",
                "bases": [{"name": "p/base-0123abcd", "ref": "localhost:5000/p/base-0123abcd:lw-1",
                           "dockerfile": "bases/b/Dockerfile", "context": "bases/b/context", "parent": None,
                           "used_by": ["a"]}],
                "apps": [{"name": "a", "original": "o/Dockerfile", "context": "o", "dockerfile": "apps/a/Dockerfile",
                          "bases": ["p/base-0123abcd"], "unbuildable": None}]}


@given(st.sampled_from([p for p in _paths(VALID_IMPORT) if p]), VALUES)
def test_import_description_loader_on_one_part_replaced(tmp_path_factory, where, value):
    import json

    from layerwise.importing.importfile import load_import
    folder = tmp_path_factory.mktemp("import")
    (folder / "import.json").write_text(json.dumps(_replaced(VALID_IMPORT, where, value)))
    try:
        load_import(folder)
    except UserError as e:
        assert "\n" not in str(e)
