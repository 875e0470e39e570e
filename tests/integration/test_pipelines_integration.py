"""The generated per-team GitLab pipelines, run for real: their job scripts in trigger order against the
real engine and registry, as a GitLab runner would (jobs in `needs` order, a trigger job only after the
jobs it needs succeeded, its variables passed downstream with the needed job's dotenv report)."""

import json
import os
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

from conftest import REGISTRY, run_cli
from layerwise.family.pipelines import GIT_ENV
from layerwise.oci.images import RegistryImage
from layerwise.oci.registry import Registry

pytestmark = pytest.mark.integration

LAYERWISE = str(Path(sys.executable).parent / "layerwise")


class Runner:
    """Runs the generated GitLab pipelines of the repositories under `root`, following triggers:
    multi-project ones (`trigger: project`, per team) and child pipelines (`trigger: include`, monorepo).
    A job with `rules` runs when one holds: a `web` pipeline, or a file its `changes` globs match
    changed in the last commit; a job whose needs did not succeed is skipped, an optional need on a
    job not in the pipeline is ignored."""

    def __init__(self, root: Path, group: str):
        self.root, self.group = root, group
        self.events: list[tuple] = []        # ("build", repo, image, status) / ("trigger", repo, downstream)
        self.received: dict[str, dict] = {}  # repo -> variables its last triggered pipeline got

    def run(self, repo: str, variables: dict[str, str] | None = None, source: str = "push",
            file: str = ".gitlab-ci.yml") -> bool:
        folder = self.root / repo
        doc = yaml.safe_load((folder / file).read_text())
        env = {**os.environ, **doc.get("variables", {}), **(variables or {}), "LAYERWISE": LAYERWISE}
        if variables:
            self.received[repo] = dict(variables)
        changed = subprocess.run(["git", "diff", "--name-only", "HEAD~1", "HEAD"], cwd=folder, capture_output=True,
                                 text=True).stdout.split()
        jobs = {name: job for name, job in doc.items() if isinstance(job, dict) and ("script" in job or "trigger" in job)
                and self._included(job, source, changed)}
        ok: dict[str, bool] = {}
        dotenv: dict[str, dict] = {}
        for name, job in jobs.items():       # written parents first: every need comes before
            needs = [n if isinstance(n, str) else n["job"] for n in job.get("needs", [])
                     if isinstance(n, str) or not n.get("optional") or n["job"] in jobs]
            if not all(ok.get(n) for n in needs):
                ok[name] = False             # GitLab skips a job whose needs failed
                continue
            if "script" in job:
                image = job["script"][0].split()[-1]
                done = subprocess.run(job["script"][0].split(), cwd=folder, env=env, capture_output=True, text=True)
                ok[name] = done.returncode == 0
                status = "failed"
                if ok[name]:
                    out = json.loads((folder / "ci/out" / (image.replace("/", "_") + ".json")).read_text())
                    status = next(i["status"] for i in out["images"] if i["key"] == image)
                    report = folder / job["artifacts"]["reports"]["dotenv"]
                    dotenv[name] = dict(line.split("=", 1) for line in report.read_text().split())
                self.events.append(("build", repo, image, status))
                continue
            assert job["trigger"]["strategy"] == "depend"
            if "include" in job["trigger"]:     # a child pipeline in the same repository
                ok[name] = self.run(repo, None, "parent_pipeline", job["trigger"]["include"])
                continue
            passed = {}
            for key, value in job.get("variables", {}).items():
                for need in needs:
                    for var, val in dotenv.get(need, {}).items():
                        value = value.replace("$" + var, val)
                passed[key] = value
            project = job["trigger"]["project"]
            assert project.startswith(self.group + "/")
            downstream = project.split("/", 1)[1]
            self.events.append(("trigger", repo, downstream))
            ok[name] = self.run(downstream, passed, "pipeline")
        return all(ok.values())

    @staticmethod
    def _included(job: dict, source: str, changed: list[str]) -> bool:
        if "rules" not in job:
            return True
        for rule in job["rules"]:
            if rule.get("if") == '$CI_PIPELINE_SOURCE == "web"' and source == "web":
                return True
            if any(fnmatch(path, glob) for glob in rule.get("changes", []) for path in changed):
                return True
        return False

    def built(self) -> list[str]:
        return [e[2] for e in self.events if e[0] == "build" and e[3] == "built"]


def _digests(keys_tags: dict[str, str]) -> dict[str, str]:
    with Registry(REGISTRY) as reg:
        return {key: reg.manifest_digest(key, tag) for key, tag in keys_tags.items()}


def _commit(repo: Path, message: str) -> None:
    env = {**os.environ, **GIT_ENV}
    subprocess.run(["git", "commit", "-qam", message], cwd=repo, env=env, check=True)


def _seed_family(small_seed, namespace, tmp_path, layout):
    """The seed family (plus app3, built on the OS base alone) as GitLab repositories."""
    text = small_seed.read_text().replace("project: ai", f"project: {namespace}-ai")
    for name in ("library/", "ai-tools/"):
        text = text.replace("{name: " + name, "{name: " + namespace + "/" + name)
    text += ("  app3:\n    code: COPY code.2/ /workspace/code/\n    config: COPY app2.conf /etc/app/app.conf\n")
    small_seed.write_text(text)
    out = tmp_path / "repos"
    result = run_cli("generate", str(small_seed), "-o", str(out), "--layout", layout, "--ci", "gitlab",
                     "--namespace", "grp")
    assert result.returncode == 0, result.stderr
    keys = {"sec": f"{namespace}/library/python3", "tools": f"{namespace}/ai-tools/env-anaconda",
            "dust": f"{namespace}/ai-tools/env-anaconda-dust", "app1": f"{namespace}-ai/app1",
            "app2": f"{namespace}-ai/app2", "app3": f"{namespace}-ai/app3"}
    tags = {keys["sec"]: "latest", keys["tools"]: "12", keys["dust"]: "runtime", keys["app1"]: "latest",
            keys["app2"]: "latest", keys["app3"]: "latest"}
    return out, keys, tags


@pytest.fixture
def team_repos(services, small_seed, namespace, tmp_path):
    return _seed_family(small_seed, namespace, tmp_path, "per-team")


def test_a_security_change_rebuilds_exactly_its_subtree_parents_first(team_repos):
    out, keys, tags = team_repos
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["app-team", "architects", "ml", "secops"]

    # The first run of the security team's pipeline builds the whole family through the triggers.
    first = Runner(out, "grp")
    assert first.run("secops"), first.events
    assert [e for e in first.events if e[0] == "trigger"] == [
        ("trigger", "secops", "architects"), ("trigger", "architects", "ml"), ("trigger", "ml", "app-team")]
    built = first.built()
    assert built[:3] == [keys[k] for k in ("sec", "tools", "dust")]
    assert sorted(built[3:]) == sorted(keys[k] for k in ("app1", "app2", "app3"))
    before = _digests(tags)

    # A commit to the security team's repository: its pipeline rebuilds security and what is built on it.
    install = out / "secops/images" / keys["sec"] / "context/security/install.sh"
    install.write_text(install.read_text() + "# hardened: v2\n")
    _commit(out / "secops", "security: v2")
    second = Runner(out, "grp")
    assert second.run("secops"), second.events
    subtree = [keys[k] for k in ("sec", "tools", "dust", "app1", "app2")]
    assert second.built() == subtree                       # parents first, exactly the descendants
    assert ("build", "app-team", keys["app3"], "skipped") in second.events
    after = _digests(tags)
    assert all(after[k] != before[k] for k in subtree)
    assert after[keys["app3"]] == before[keys["app3"]]     # outside the subtree: the same image

    # Each child was built on the digest its parent pushed, which the trigger passed downstream.
    sec_digest = (out / "secops/ci/out" / (keys["sec"].replace("/", "_") + ".digest")).read_text().strip()
    assert sec_digest == after[keys["sec"]]
    assert second.received["architects"]["LAYERWISE_PARENT_DIGEST"] == sec_digest
    with Registry(REGISTRY) as reg:
        tools = RegistryImage(f"{REGISTRY}/{keys['tools']}:12", registry=reg)
        assert tools.config["config"]["Labels"]["org.opencontainers.image.base.digest"] == sec_digest
        app1 = RegistryImage(f"{REGISTRY}/{keys['app1']}:latest", registry=reg)
        assert app1.config["config"]["Labels"]["org.opencontainers.image.base.digest"] == after[keys["dust"]]


def test_a_parent_that_fails_to_build_triggers_none_of_its_children(team_repos):
    out, keys, tags = team_repos
    install = out / "secops/images" / keys["sec"] / "context/security/install.sh"
    install.write_text(install.read_text() + "exit 3\n")
    _commit(out / "secops", "security: broken")
    broken = Runner(out, "grp")
    assert not broken.run("secops")
    assert broken.events == [("build", "secops", keys["sec"], "failed")]   # no trigger, no child build
    assert not (out / "secops/ci/out" / (keys["sec"].replace("/", "_") + ".digest")).exists()
    assert set(_digests(tags).values()) == {None}                           # nothing was pushed


def test_the_monorepo_runs_the_changed_image_then_its_descendants_as_child_pipelines(services, small_seed, namespace,
                                                                                       tmp_path):
    out, keys, tags = _seed_family(small_seed, namespace, tmp_path, "monorepo")
    first = Runner(out, "grp")
    assert first.run("", source="web"), first.events          # started by hand: every image
    assert sorted(first.built()) == sorted(keys.values())
    before = _digests(tags)

    # A commit to the tools image's folder: its pipeline, then (each after its parent's) its descendants'.
    setup = out / "images" / keys["tools"] / "context/tools/setup.sh"
    setup.write_text(setup.read_text() + "# tools v2\n")
    _commit(out, "tools: v2")
    second = Runner(out, "grp")
    assert second.run(""), second.events
    assert second.built()[:2] == [keys["tools"], keys["dust"]]
    assert sorted(second.built()[2:]) == sorted([keys["app1"], keys["app2"]])
    assert {e[2] for e in second.events} == {keys[k] for k in ("tools", "dust", "app1", "app2")}   # path filters
    after = _digests(tags)
    assert [k for k in tags if after[k] != before[k]] == [keys[k] for k in ("tools", "dust", "app1", "app2")]
