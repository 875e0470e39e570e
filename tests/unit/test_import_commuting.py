"""Steps that create no layer and commute with their neighbours (importing/commuting.py), and what
import does with them: shared prefixes no longer cut by a LABEL, every move listed, and the
rewritten Dockerfiles the same builds as the originals (checked on every corpus family)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import CORPORA, corpus_parametrize, run_cli
from layerwise.dockerfiles import parse_instructions
from layerwise.importing.commuting import independent, sink
from layerwise.importing.importer import import_family
from layerwise.plan.model import Step

SETS = sorted(p.name for p in CORPORA.iterdir() if p.is_dir() and p.name != "buildkit_parser_testfiles") \
    if CORPORA.is_dir() else []


def step(text: str) -> Step:
    return Step(instruction=parse_instructions(text)[0].text, category="")


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize(("a", "b", "swap"), [
    ("LABEL maintainer=me", "RUN apt-get install -y curl", True),
    ("EXPOSE 80", "COPY . /app", True),
    ("STOPSIGNAL SIGTERM", "RUN make", True),
    ("LABEL a=1", "LABEL b=2", True),
    ("LABEL a=1", "LABEL a=2", False),                 # the last one wins
    ("ENV A=1", "RUN make", False),                     # a RUN sees its whole environment
    ("ARG V=1", "RUN make", False),
    ("ENV A=1", "COPY . /app", True),
    ("ENV DEST=/app", "COPY . $DEST", False),           # the COPY names it
    ("ENV A=1", "LABEL version=${A}", False),
    ("ENV A=1", "ENV A=2", False),
    ("USER app", "COPY . /app", True),                  # COPY's files are root's whatever USER says
    ("USER app", "RUN id", False),
    ("USER app", "WORKDIR /home/app", False),           # BuildKit creates a WORKDIR owned by USER
    ("WORKDIR /app", "COPY . .", False),                # relative destinations
    ("WORKDIR /app", "LABEL a=1", True),
    ("WORKDIR a", "WORKDIR b", False),
    ("SHELL [\"/bin/bash\", \"-c\"]", "CMD echo hi", False),   # a shell-form CMD takes the SHELL
    ("SHELL [\"/bin/bash\", \"-c\"]", "COPY a /a", True),
    ("LABEL a=1", "VOLUME /data", False),
    ("RUN a", "COPY b /b", False),                      # two layers: never swapped here
])
def test_independent(a, b, swap):
    assert independent(step(a), step(b)) is swap
    assert independent(step(b), step(a)) is swap       # a symmetric relation


def test_sink_moves_movable_steps_down_and_keeps_their_order():
    steps = [step(t) for t in ("LABEL a=1", "LABEL b=2", "ENV X=1", "RUN apt-get update", "COPY . /app",
                               "USER app", "RUN make", "EXPOSE 80", "CMD run")]
    assert [steps[i].instruction for i in sink(steps)] == [
        "ENV X=1", "RUN apt-get update", "COPY . /app", "USER app", "RUN make", "CMD run",
        "LABEL a=1", "LABEL b=2", "EXPOSE 80"]
    fixed = [step(t) for t in ("RUN a", "ENV A=1", "RUN b")]
    assert sink(fixed) == [0, 1, 2]


def test_a_label_before_or_after_a_shared_run_no_longer_cuts_the_prefix(tmp_path):
    """The issue's case: LABEL above the shared RUN in one Dockerfile, below it in the other."""
    write(tmp_path, {
        "a/Dockerfile": "FROM os:1\nLABEL maintainer=team\nRUN apt-get install -y curl\nRUN setup\nRUN make a\n",
        "b/Dockerfile": "FROM os:1\nRUN apt-get install -y curl\nLABEL maintainer=team\nRUN setup\nRUN make b\n"})
    family = import_family([tmp_path])
    (base,) = family.bases
    # One base with both RUNs; written in one of its users' orders (a tie: the first order), so one move.
    assert [s.instruction for s in base.steps] == [
        "RUN apt-get install -y curl", "LABEL maintainer=team", "RUN setup"]
    moves = {r.source.name: [m.to_dict() for m in r.moves] for r in family.refactored}
    assert moves == {
        "a": [{"stage": 0, "instruction": "LABEL maintainer=team", "past": ["RUN apt-get install -y curl"],
               "base": base.name, "direction": "down"}],
        "b": []}
    r = run_cli("import", str(tmp_path), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["moves"] == 1
    text = run_cli("import", str(tmp_path)).stdout
    assert "LABEL maintainer=team" in text and "moved" in text


def test_nothing_moves_where_the_users_agree(tmp_path):
    """A LABEL at the top of every Dockerfile stays there: the base keeps the order its users wrote."""
    write(tmp_path, {"a/Dockerfile": "FROM os:1\nLABEL maintainer=team\nRUN setup\nRUN a\n",
                     "b/Dockerfile": "FROM os:1\nLABEL maintainer=team\nRUN setup\nRUN b\n"})
    family = import_family([tmp_path])
    assert [s.instruction for s in family.bases[0].steps] == ["LABEL maintainer=team", "RUN setup"]
    assert not any(r.moves for r in family.refactored)


def _rebuilt(family, item, index: int) -> list[Step]:
    """The chain a refactored stage builds: its bases' steps (recursively) and what remains."""
    if index not in item.stage_bases:
        return item.source.chain(index)
    below, name = [], item.stage_bases[index]
    while name:
        base = family.base(name)
        below = list(base.steps) + below
        name = base.parent
    return below + list(item.remaining[index])


@pytest.mark.corpora
@corpus_parametrize("corpus", SETS)
def test_every_rewritten_stage_builds_what_its_original_built(corpus):
    """Per stage of every Dockerfile: the rewritten chain holds the same steps, and every pair of
    steps whose order changed is a pair `independent` allows to swap (so the image is the same)."""
    family = import_family([CORPORA / corpus])
    checked = 0
    for item in family.refactored:
        for index in item.stage_bases:
            original = item.source.chain(index)[1:]
            rebuilt = _rebuilt(family, item, index)
            assert Counter(s.identity for s in rebuilt) == Counter(s.identity for s in original)
            seen: Counter = Counter()
            position = {}
            for k, s in enumerate(rebuilt):   # the n-th copy of a step to the n-th copy
                position[(s.identity, seen[s.identity])] = k
                seen[s.identity] += 1
            seen.clear()
            where = []
            for s in original:
                where.append(position[(s.identity, seen[s.identity])])
                seen[s.identity] += 1
            for i in range(len(original)):
                for j in range(i + 1, len(original)):
                    if where[i] > where[j]:
                        assert independent(original[i], original[j]), (item.source.name, original[i], original[j])
            checked += 1
    assert checked


@pytest.mark.parametrize(("a", "b", "may"), [
    ("COPY a.txt /opt/a/", "COPY b.txt /srv/b/", True),
    ("COPY a.txt /opt/", "COPY b.txt /opt/b/", False),       # one inside the other
    ("COPY a.txt rel/", "COPY b.txt /srv/", False),         # relative: depends on WORKDIR
    ("RUN apt-get install -y curl", "RUN apt-get install -y git", True),
    ("RUN apt-get install -y curl", "RUN pip install numpy", False),
    ("RUN make", "RUN make install", False),
])
def test_layer_swaps_that_may_be_proposed(a, b, may):
    from layerwise.importing.categories import rule_for
    from layerwise.importing.commuting import may_swap_layers

    def cat(t):
        ins = parse_instructions(t)[0]
        rule = rule_for("RUN", command=" ".join(ins.args)) if ins.keyword == "RUN" else None
        return Step(instruction=ins.text, category=rule.category if rule else "code")
    assert may_swap_layers(cat(a), cat(b)) is may


def test_two_copies_in_the_other_order_are_proposed_not_applied(tmp_path):
    files = {"a/Dockerfile": "FROM os:1\nRUN setup\nCOPY x.txt /opt/x/\nCOPY y.txt /opt/y/\nRUN a\n",
             "b/Dockerfile": "FROM os:1\nRUN setup\nCOPY x.txt /opt/x/\nCOPY y.txt /opt/y/\nRUN b\n",
             "c/Dockerfile": "FROM os:1\nRUN setup\nCOPY y.txt /opt/y/\nCOPY x.txt /opt/x/\nRUN c\n"}
    for app in "abc":
        files[f"{app}/x.txt"], files[f"{app}/y.txt"] = "x" * 100, "y" * 20
    write(tmp_path, files)
    family = import_family([tmp_path])
    (swap,) = family.swaps
    assert swap.to_dict() == {"after": "RUN setup", "order": ["COPY x.txt /opt/x/", "COPY y.txt /opt/y/"],
                              "apps": ["c"], "others": ["a", "b"], "known_bytes": 120, "unknown_layers": 0}
    # Proposed only: c still builds its COPYs in its own order, after the shared RUN.
    c = next(r for r in family.refactored if r.source.name == "c")
    assert [s.instruction for s in c.remaining[0]][:2] == ["COPY y.txt /opt/y/", "COPY x.txt /opt/x/"]
    text = run_cli("import", str(tmp_path)).stdout
    assert "layer swaps proposed" in text and "120 B" in text


def test_reorder_applies_the_swap_and_lists_it_as_moves(tmp_path):
    files = {"a/Dockerfile": "FROM os:1\nRUN setup\nCOPY x.txt /opt/x/\nCOPY y.txt /opt/y/\nRUN a\n",
             "b/Dockerfile": "FROM os:1\nRUN setup\nCOPY y.txt /opt/y/\nCOPY x.txt /opt/x/\nRUN b\n",
             "c/Dockerfile": "FROM os:1\nRUN setup\nCOPY x.txt /opt/x/\nCOPY y.txt /opt/y/\nRUN c\n"}
    for app in "abc":
        files[f"{app}/x.txt"], files[f"{app}/y.txt"] = "x", "y"
    write(tmp_path, files)
    family = import_family([tmp_path], reorder=True)
    assert family.reordered and [w.apps for w in family.swaps] == [("b",)]
    (base,) = family.bases
    assert [s.instruction for s in base.steps] == ["RUN setup", "COPY x.txt /opt/x/", "COPY y.txt /opt/y/"]
    b = next(r for r in family.refactored if r.source.name == "b")
    assert [(m.instruction, m.direction) for m in b.moves] == [("COPY x.txt /opt/x/", "swapped")]
    # Without a refactored folder to verify, --reorder is refused before anything is done.
    r = run_cli("import", str(tmp_path), "--reorder")
    assert r.returncode == 2 and "--refactor-to" in r.stderr
