#!/usr/bin/env python3
"""Repositories and pipelines `generate --layout` writes, and what a security-team change rebuilds.

    .venv/bin/python bench/pipelines.py [--corpora DIR] [--corpus NAME ...] [--no-build]

1. For the seed family and each imported corpus family (../shared/corpora): repositories and pipeline
   files written per layout and CI system, and seconds to write them.
2. With the engine and registry (scripts/services start): the seed (its prepared model and wheels,
   plus app3 built on the OS base alone) as per-team GitLab repositories under a namespace of its own.
   Their jobs run as a runner would, in trigger order from the security team's pipeline: first the
   whole family, then after a commit to the security team's repository. Per run: images built and
   skipped, compressed bytes pushed, seconds. Prints figures; asserts nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from layerwise.family.pipelines import GIT_ENV
from layerwise.units import format_size

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "examples" / "seed"
CORPORA = ROOT.parent / "shared" / "corpora"
LAYERWISE = str(Path(sys.executable).parent / "layerwise")


def cli(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([LAYERWISE, *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"layerwise {' '.join(args)} failed:\n{done.stderr}")
    return done


def written(source: Path, tmp: Path, label: str) -> None:
    for layout in ("per-team", "monorepo"):
        for ci in ("gitlab", "github"):
            out = tmp / f"{label}-{layout}-{ci}"
            started = time.monotonic()
            line = cli("generate", str(source), "-o", str(out), "--layout", layout, "--ci", ci).stdout.strip()
            print(f"  {label:<42} {layout:<9} {ci:<7} {line.split(' to ')[0]}  ({time.monotonic() - started:.1f} s)")


def run_pipelines(root: Path, repo: str, log: list[dict]) -> bool:
    """The repository's .gitlab-ci.yml jobs in order; a trigger job runs the downstream one."""
    folder = root / repo
    doc = yaml.safe_load((folder / ".gitlab-ci.yml").read_text())
    env = {**os.environ, **doc.get("variables", {}), "LAYERWISE": LAYERWISE}
    ok: dict[str, bool] = {}
    for name, job in doc.items():
        if not isinstance(job, dict) or not ("script" in job or "trigger" in job):
            continue
        if not all(ok.get(n) for n in job.get("needs", [])):
            ok[name] = False
            continue
        if "trigger" in job:
            ok[name] = run_pipelines(root, job["trigger"]["project"].split("/", 1)[1], log)
            continue
        image = job["script"][0].split()[-1]
        started = time.monotonic()
        done = subprocess.run(job["script"][0].split(), cwd=folder, env=env, capture_output=True, text=True)
        ok[name] = done.returncode == 0
        result = {"key": image, "status": "failed", "new_bytes": 0}
        if ok[name]:
            out = json.loads((folder / "ci/out" / (image.replace("/", "_") + ".json")).read_text())
            result = next(i for i in out["images"] if i["key"] == image)
        log.append({"repo": repo, "key": image, "status": result["status"], "new_bytes": result["new_bytes"],
                    "seconds": time.monotonic() - started})
    return all(ok.values())


def summary(label: str, log: list[dict], seconds: float) -> None:
    built = [e for e in log if e["status"] == "built"]
    print(f"  {label}: {len(built)} of {len(log)} images built, {format_size(sum(e['new_bytes'] for e in log))} "
          f"pushed, {seconds:.1f} s in all")
    for e in log:
        print(f"    {e['repo']:<11} {e['key']:<40} {e['status']:<8} {format_size(e['new_bytes']):>9} "
              f"{e['seconds']:6.1f} s")


def security_change(tmp: Path) -> None:
    ns = "bench" + uuid.uuid4().hex[:8]
    stack_dir = tmp / "seed"
    shutil.copytree(SEED, stack_dir, ignore=shutil.ignore_patterns("layerwise.state.json"))
    stack = stack_dir / "layerwise.yaml"
    text = stack.read_text().replace("project: ai", f"project: {ns}-ai")
    for name in ("library/", "ai-tools/"):
        text = text.replace("{name: " + name, "{name: " + ns + "/" + name)
    app3 = "  app3:\n    code: COPY code.2/ /workspace/code/\n    config: COPY app2.conf /etc/app/app.conf\n"
    stack.write_text(text + app3)     # built on the OS base alone: outside the security team's subtree
    repos = tmp / "repos"
    cli("generate", str(stack), "-o", str(repos), "--layout", "per-team", "--ci", "gitlab", "--namespace", "bench")
    for label, change in (("whole family, first run", None), ("after a security-team commit", "# v2\n")):
        if change:
            install = repos / "secops/images" / ns / "library/python3/context/security/install.sh"
            install.write_text(install.read_text() + change)
            subprocess.run(["git", "commit", "-qam", "security v2"], cwd=repos / "secops", check=True,
                           env={**os.environ, **GIT_ENV})
        log: list[dict] = []
        started = time.monotonic()
        if not run_pipelines(repos, "secops", log):
            sys.exit(f"a pipeline failed: {log}")
        summary(label, log, time.monotonic() - started)


def main() -> None:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", action="append", help="corpus sets to import (default: three)")
    parser.add_argument("--corpora", type=Path, default=CORPORA, help=f"the corpus folder (default {CORPORA})")
    parser.add_argument("--no-build", action="store_true", help="only count what is written")
    args = parser.parse_args()
    corpora = args.corpus or ["GoogleCloudPlatform__microservices-demo", "docker-library__python",
                              "dotnet-architecture__eShopOnContainers"]
    with tempfile.TemporaryDirectory(prefix="layerwise-bench-pipelines-") as tmp_name:
        tmp = Path(tmp_name)
        print("repositories and pipeline files written:")
        written(SEED / "layerwise.yaml", tmp, "seed")
        for name in corpora:
            if not (args.corpora / name).is_dir():
                print(f"  {name}: not in {args.corpora}, left out")
                continue
            imported = tmp / f"import-{name}"
            cli("import", str(args.corpora / name), "--refactor-to", str(imported))
            written(imported, tmp, name)
        if not args.no_build:
            print("per-team GitLab pipelines run in trigger order from the security team's (real engine and registry):")
            security_change(tmp)


if __name__ == "__main__":
    main()
