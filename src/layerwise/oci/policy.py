"""Which registries images may come from: a policy the user sets, checked before the engine is asked.

The policy is `--allow-registry HOST` (repeatable), else $LAYERWISE_ALLOWED_REGISTRIES (a comma
list), else the stack file's `policy: {registries: [...]}`; the first one given wins, and unset means
any registry. An entry is a registry host as Docker writes it (`localhost:5000`, `docker.io`), or a
glob (`registry.test:*`, `*.corp.example`). It covers every image a build reads: the base, each
FROM, COPY --from and RUN --mount from= image, and the BuildKit frontend a `# syntax=` line names.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from ..dockerfiles import image_references, syntax_frontend
from ..errors import UserError
from .reference import Reference, canonical_registry

ENV = "LAYERWISE_ALLOWED_REGISTRIES"


@dataclass(frozen=True)
class RegistryPolicy:
    registries: tuple[str, ...] = ()     # empty: any registry
    source: str = ""                      # where it came from, for the refusal message

    @classmethod
    def resolve(cls, flags: tuple[str, ...] | list[str] = (), stack=None,
                env: dict[str, str] | None = None) -> "RegistryPolicy":
        env = os.environ if env is None else env
        if flags:
            return cls(_entries(flags), "--allow-registry")
        listed = env.get(ENV, "").strip()
        if listed:
            return cls(_entries(listed.split(",")), f"${ENV}")
        if stack is not None and getattr(stack, "allowed_registries", ()):
            where = f"{stack.path}:{stack.policy_line}" if stack.policy_line else str(stack.path)
            return cls(_entries(stack.allowed_registries), f"policy.registries in {where}")
        return cls()

    def allows(self, ref: Reference) -> bool:
        if not self.registries:
            return True
        host = canonical_registry(ref.registry)
        return any(fnmatch.fnmatchcase(host, pattern) for pattern in self.registries)

    def check(self, image: str, used_by: str, file: str | Path | None = None) -> Reference:
        """The parsed reference, or a UserError naming the image, its user and the policy."""
        ref = Reference.parse(image)
        if not self.allows(ref):
            raise UserError(f"{used_by} uses {image} from registry {ref.registry}, which the registry "
                            f"policy does not allow (allowed: {', '.join(self.registries)}; set by "
                            f"{self.source}); push it to an allowed registry or extend the policy", file)
        return ref

    def check_dockerfile(self, text: str, used_by: str, file: str | Path | None = None) -> None:
        """Every image the Dockerfile would make the engine fetch, the `# syntax=` frontend first."""
        frontend = syntax_frontend(text)
        images = ([frontend] if frontend else []) + image_references(text)
        for image in images:
            if not image.strip():
                raise UserError(f"{used_by} names an empty image (a FROM whose variables have no value)", file)
            self.check(image, f"{used_by} (its '# syntax=' frontend)" if image == frontend else used_by, file)


def _entries(values) -> tuple[str, ...]:
    entries = tuple(canonical_registry(v) for v in values if v and v.strip())
    for entry in entries:
        if "/" in entry:
            raise UserError(f"registry policy entry {entry!r} is not a registry host; write HOST[:PORT] "
                            "(a glob such as 'registry.test:*' is allowed)")
    return entries
