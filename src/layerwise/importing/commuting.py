"""Steps that create no layer and commute with their neighbours, so they need not cut a shared prefix.

`LABEL maintainer=…` above a shared `RUN` in one Dockerfile and below it in another would stop the
prefix there. Two adjacent steps *commute* when neither reads what the other sets: swapping them
gives the same image (file tree and config). `sink` moves every movable step (LABEL, EXPOSE,
STOPSIGNAL, MAINTAINER, ENV, ARG, SHELL, USER, WORKDIR) down past the steps it commutes with, within
its stage, and the prefix tree is built on these orders: equal layers then line up. Any two orders
of the same steps that differ only in commuting pairs build the same image (the dependent pairs keep
their order), which is what lets `importer` write each base in the order its users wrote it.

Rules, cautious where a step's effect cannot be seen in its text: a RUN sees every ENV and ARG (as
its environment), the USER, the WORKDIR and the SHELL, so none of them passes a RUN; COPY/ADD see the
WORKDIR (relative destinations) and the variables they name; BuildKit creates a WORKDIR owned by the
USER; SHELL shapes shell-form CMD, ENTRYPOINT and HEALTHCHECK; ONBUILD and VOLUME are passed by nothing.
"""

from __future__ import annotations

import functools

from ..dockerfiles import VARIABLE, parse_instructions
from ..plan.model import Step
from .categories import rule_for

MOVABLE = frozenset({"LABEL", "EXPOSE", "STOPSIGNAL", "MAINTAINER", "ENV", "ARG", "SHELL", "USER", "WORKDIR"})
# What a movable step may be swapped with at all (others, such as ONBUILD and VOLUME, keep their place).
_PASSABLE = MOVABLE | {"RUN", "COPY", "ADD", "CMD", "ENTRYPOINT", "HEALTHCHECK"}
# Keywords whose last value wins (or, for WORKDIR, builds on the one before): never swapped with their own kind.
_SINGLE = frozenset({"STOPSIGNAL", "MAINTAINER", "SHELL", "USER", "WORKDIR"})
# keyword of the moving step -> keywords it never passes, whatever their text.
_READ_BY = {
    "ENV": {"RUN"}, "ARG": {"RUN"},
    "USER": {"RUN", "WORKDIR"},
    "WORKDIR": {"RUN", "COPY", "ADD", "USER"},
    "SHELL": {"RUN", "CMD", "ENTRYPOINT", "HEALTHCHECK"},
}


@functools.lru_cache(maxsize=65536)
def _parsed(text: str):
    return parse_instructions(text)[0]


def _defined(step: Step) -> set[str]:
    """Names an ENV or ARG sets."""
    if step.keyword == "ARG":
        return {word.split("=", 1)[0] for word in _parsed(step.instruction).args}
    return set(_parsed(step.instruction).args[::2]) if step.keyword == "ENV" else set()


def _keys(step: Step) -> set[str]:
    return set(_parsed(step.instruction).args[::2]) if step.keyword == "LABEL" else set()


def _referenced(step: Step) -> set[str]:
    return {m.group(1) or m.group(4) for m in VARIABLE.finditer(step.instruction)}


def independent(a: Step, b: Step) -> bool:
    """True when a and b, one right after the other, give the same image in either order."""
    if a.keyword not in MOVABLE and b.keyword not in MOVABLE:
        return False
    if a.keyword not in _PASSABLE or b.keyword not in _PASSABLE:
        return False
    if a.keyword == b.keyword and a.keyword in _SINGLE:
        return False
    if b.keyword in _READ_BY.get(a.keyword, ()) or a.keyword in _READ_BY.get(b.keyword, ()):
        return False
    da, db = _defined(a), _defined(b)
    if da & db or da & _referenced(b) or db & _referenced(a) or _keys(a) & _keys(b):
        return False
    return True


def sink(steps: tuple[Step, ...] | list[Step]) -> list[int]:
    """The order (indices into `steps`) with every movable step moved down past the steps it is
    independent of. Movable steps that end up in the same gap keep their order: one passes a run
    of movable steps only together with the step that stopped them. Deterministic, and the
    identity when nothing can move."""
    order = list(range(len(steps)))
    for i in range(len(steps) - 1, -1, -1):
        if steps[i].keyword not in MOVABLE:
            continue
        at = order.index(i)
        while at + 1 < len(order):
            end = at + 1
            while end < len(order) and steps[order[end]].keyword in MOVABLE:
                end += 1
            if end > at + 1 and end == len(order):
                break   # only movable steps below it, down to the end: stay above them
            passed = order[at + 1:end + 1]
            if not all(independent(steps[i], steps[j]) for j in passed):
                break
            order[at:end + 1] = passed + [i]
            at = end
    return order


# ----------------------------------------------------------------------------- layer swaps: proposed only

def may_swap_layers(a: Step, b: Step) -> bool:
    """Two layer steps whose order *may* not matter: two COPY/ADD of the build context to unrelated
    absolute paths (neither inside the other), or two installs by the same package manager. Not
    proven (a RUN can read anything): import only proposes such swaps."""
    if a.keyword in ("COPY", "ADD") and b.keyword in ("COPY", "ADD"):
        da, db = _destination(a), _destination(b)
        return bool(da and db) and not (da.startswith(db) or db.startswith(da))
    if a.keyword == b.keyword == "RUN" and a.category in ("tools", "library") and a.category == b.category:
        ra, rb = _rule_of(a.instruction), _rule_of(b.instruction)
        return ra is not None and ra == rb
    return False


def _destination(step: Step) -> str | None:
    ins = _parsed(step.instruction)
    if any(f.startswith("--from") for f in ins.flags) or not ins.copy_sources or "$" in step.instruction:
        return None
    dest = ins.args[-1]
    return dest.rstrip("/") + "/" if dest.startswith("/") else None


@functools.lru_cache(maxsize=65536)
def _rule_of(text: str):
    return rule_for("RUN", command=" ".join(_parsed(text).args))
