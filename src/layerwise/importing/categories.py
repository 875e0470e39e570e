"""Categories of imported steps, from what each step does: one table of rules, the first match wins.

A rule looks at one instruction: the command of a RUN, or the sources (and destination) of a
COPY/ADD with their size when the build context is known. A step no rule names takes its
category from its neighbours (`importer.categorize`): a RUN from the layer below it, a step
without a layer from the layer above it. Edit the table, not the code, to teach it a new tool.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

# Most stable first: the order a stack file lists categories in.
CATEGORY_ORDER = ("os", "tools", "library", "model", "code", "config")
# Owner and changes per month of each category, as `import -o` writes them into a stack file.
CATEGORY_OWNERS = {"tools": ("platform", 0.5), "library": ("platform", 2), "model": ("ml", 1),
                   "code": ("app-team", 20), "config": ("app-team", 10)}

MODEL_BYTES = 50 * 2**20     # a COPY of files this large is a model (or other data), whatever their names


@dataclass(frozen=True)
class Rule:
    category: str
    keywords: tuple[str, ...]      # the instructions it applies to
    pattern: str | None            # RUN: searched in the command; COPY/ADD: matched by every source
    why: str                       # shown in the report and import.json
    min_bytes: int = 0             # COPY/ADD: only when the files copied are at least this large
    destination: str | None = None   # COPY/ADD: matched against the destination instead


_COPY = ("COPY", "ADD")
RULES: tuple[Rule, ...] = (
    Rule("tools", ("RUN",), r"\b(apt-get|apt|apk|yum|dnf|microdnf|zypper)\b", "system packages"),
    Rule("library", ("RUN",), r"\b(pip3?|pipenv|poetry|uv pip|conda|mamba|micromamba)\b", "Python packages"),
    Rule("library", ("RUN",), r"\b(npm|yarn|pnpm)\b", "Node packages"),
    Rule("library", ("RUN",), r"\b(gem|bundle)\b", "Ruby gems"),
    Rule("library", ("RUN",), r"\bR\b.*\binstall\.packages\b", "R packages"),
    Rule("library", ("RUN",), r"\bgo (mod download|get)\b", "Go modules"),
    Rule("library", ("RUN",), r"\b(dotnet restore|cargo fetch|composer install)\b", "packages"),
    Rule("model", _COPY, r".*\.(bin|pt|pth|onnx|safetensors|h5|hdf5|ckpt|pkl|model|gguf|tflite|pb|npy|npz)",
         "model or data files"),
    Rule("model", _COPY, None, "large files", min_bytes=MODEL_BYTES),
    Rule("library", _COPY, r"(.*/)?(requirements[^/]*\.txt|package(-lock)?\.json|yarn\.lock|pnpm-lock\.yaml|"
         r"go\.(mod|sum)|Gemfile(\.lock)?|Pipfile(\.lock)?|poetry\.lock|environment\.ya?ml|conda[^/]*\.ya?ml|"
         r"[^/]*\.(csproj|fsproj|sln)|NuGet\.config|Cargo\.(toml|lock)|composer\.(json|lock))",
         "package manifests"),
    Rule("config", _COPY, r".*\.(conf|cfg|ini|ya?ml|toml|properties|env|json)", "config files"),
    Rule("config", _COPY, None, "copied to /etc", destination=r"/etc(/.*)?"),
    Rule("code", _COPY, None, "sources"),
)


@functools.lru_cache(maxsize=65536)   # families repeat the same instructions thousands of times
def rule_for(keyword: str, command: str = "", sources: tuple[str, ...] = (), destination: str = "",
             size: int | None = None) -> Rule | None:
    """The first rule of the table that says what this instruction is, or None."""
    for rule in RULES:
        if keyword not in rule.keywords:
            continue
        if keyword == "RUN":
            if re.search(rule.pattern, command):
                return rule
            continue
        if rule.min_bytes and (size is None or size < rule.min_bytes):
            continue
        if rule.destination and not re.fullmatch(rule.destination, destination.rstrip("/") or "/"):
            continue
        if rule.pattern and not (sources and all(re.fullmatch(rule.pattern, s.strip("/\"'")) for s in sources)):
            continue
        return rule
    return None
