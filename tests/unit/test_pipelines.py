"""`generate --layout`, `affected` and `plan --format`: repositories, pipelines (linted by actionlint and
GitLab CI's JSON schema), the trigger script against a loopback API, bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CORPORA, run_cli, write_file

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]' installs it)")
    return path


def generate(source, out, layout, ci, *extra):
    result = run_cli("generate", str(source), "-o", str(out), "--layout", layout, "--ci", ci, *extra)
    assert result.returncode == 0, result.stderr
    return result


def worktree(root: Path) -> dict[str, tuple[bytes, int]]:
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        if ".git" in dirnames:
            dirnames.remove(".git")
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = (f.read(), os.stat(p).st_mode)
    return out


def head(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_per_team_writes_one_committed_repository_per_owner_deterministically(small_seed, tmp_path):
    result = generate(small_seed, tmp_path / "a", "per-team", "gitlab")
    assert "wrote 4 git repositories with 4 gitlab pipeline files for 5 images" in result.stdout
    a = tmp_path / "a"
    assert sorted(p.name for p in a.iterdir() if p.is_dir()) == ["app-team", "architects", "ml", "secops"]
    imports = {team: json.loads((a / team / "import.json").read_text()) for team in ("secops", "ml", "app-team")}
    assert [b["name"] for b in imports["secops"]["bases"]] == ["library/python3"]
    assert [b["ref"] for b in imports["app-team"]["bases"]] == ["localhost:5000/ai/app1:latest",
                                                                "localhost:5000/ai/app2:latest"]
    # The team's image starts FROM the parent's tag, which another team's pipeline pushes.
    dockerfile = (a / "ml/images/ai-tools/env-anaconda-dust/Dockerfile").read_text()
    assert "FROM localhost:5000/ai-tools/env-anaconda:12" in dockerfile
    assert (a / "ml/images/ai-tools/env-anaconda-dust/context/models/dust.model").stat().st_size == 1 << 20
    assert os.access(a / "secops/ci/build.sh", os.X_OK)
    # A git repository with one clean commit by a fixed author at a fixed date.
    log = subprocess.run(["git", "log", "--format=%an %ad"], cwd=a / "secops", capture_output=True, text=True)
    assert log.stdout.splitlines() == ["layerwise Sat Jan 1 00:00:00 2000 +0000"]
    status = subprocess.run(["git", "status", "--porcelain"], cwd=a / "secops", capture_output=True, text=True)
    assert status.stdout == ""
    # README: the family as Mermaid, this team's images highlighted.
    readme = (a / "ml/README.md").read_text()
    assert "```mermaid" in readme and "class i2 mine" in readme
    # The same input: the same files and the same commit ids.
    generate(small_seed, tmp_path / "b", "per-team", "gitlab")
    assert worktree(a) == worktree(tmp_path / "b")
    for team in ("app-team", "architects", "ml", "secops"):
        assert head(a / team) == head(tmp_path / "b" / team)


def test_a_team_repository_is_a_family_layerwise_reads(small_seed, tmp_path):
    generate(small_seed, tmp_path / "r", "per-team", "gitlab")
    plan = json.loads(run_cli("plan", str(tmp_path / "r/ml"), "--json").stdout)["plan"]
    (img,) = plan["images"]
    assert img["key"] == "ai-tools/env-anaconda-dust" and img["from"] == "localhost:5000/ai-tools/env-anaconda:12"
    result = run_cli("affected", str(tmp_path / "r/ml"), "--changed",
                     "images/ai-tools/env-anaconda-dust/context/models/dust.model", "--json")
    assert json.loads(result.stdout)["images"][0]["key"] == "ai-tools/env-anaconda-dust"


def test_gitlab_per_team_triggers_the_child_teams_after_the_build(small_seed, tmp_path):
    generate(small_seed, tmp_path / "r", "per-team", "gitlab", "--namespace", "infra/ai")
    doc = yaml.safe_load((tmp_path / "r/ml/.gitlab-ci.yml").read_text())
    build = doc["build:ai-tools/env-anaconda-dust"]
    assert build["script"] == ["ci/build.sh ai-tools/env-anaconda-dust"]
    trigger = doc["trigger:app-team:after:ai-tools/env-anaconda-dust"]
    assert trigger["needs"] == ["build:ai-tools/env-anaconda-dust"]
    assert trigger["trigger"] == {"project": "infra/ai/app-team", "branch": "main", "strategy": "depend"}
    assert trigger["variables"]["LAYERWISE_PARENT_DIGEST"] == "$LAYERWISE_DIGEST"
    leaves = yaml.safe_load((tmp_path / "r/app-team/.gitlab-ci.yml").read_text())
    assert not [k for k in leaves if k.startswith("trigger:")]        # nothing is built on the apps


def test_gitlab_files_validate_against_gitlab_ci_schema(small_seed, tmp_path):
    check = tool("check-jsonschema")
    generate(small_seed, tmp_path / "team", "per-team", "gitlab")
    generate(small_seed, tmp_path / "mono", "monorepo", "gitlab")
    files = sorted((tmp_path / "team").glob("*/.gitlab-ci.yml")) + [tmp_path / "mono/.gitlab-ci.yml"] + sorted(
        (tmp_path / "mono/ci/pipelines").glob("*.yml"))
    assert len(files) == 4 + 1 + 5
    done = subprocess.run([check, "--builtin-schema", "vendor.gitlab-ci", *map(str, files)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    # The schema check is not vacuous: a trigger strategy GitLab does not know is refused.
    bad = write_file(tmp_path / "bad.yml", "job: {trigger: {project: x, strategy: sometimes}}\n")
    assert subprocess.run([check, "--builtin-schema", "vendor.gitlab-ci", str(bad)], capture_output=True).returncode


def test_gitlab_monorepo_runs_each_image_after_its_parent_when_its_folder_or_a_parent_changed(small_seed, tmp_path):
    result = generate(small_seed, tmp_path / "m", "monorepo", "gitlab")
    assert "wrote 1 git repository with 6 gitlab pipeline files" in result.stdout
    doc = yaml.safe_load((tmp_path / "m/.gitlab-ci.yml").read_text())
    job = doc["ai-tools/env-anaconda"]
    assert job["needs"] == [{"job": "library/python3", "optional": True}]
    assert job["trigger"] == {"include": "ci/pipelines/ai-tools-env-anaconda.yml", "strategy": "depend"}
    assert job["rules"][1]["changes"] == ["images/ai-tools/env-anaconda/**/*", "images/library/python3/**/*"]
    child = yaml.safe_load((tmp_path / "m/ci/pipelines/ai-tools-env-anaconda.yml").read_text())
    assert child["build:ai-tools/env-anaconda"]["script"] == ["ci/build.sh ai-tools/env-anaconda"]
    assert "/images/ai-tools/env-anaconda/ @architects" in (tmp_path / "m/CODEOWNERS").read_text()


def test_github_workflows_pass_actionlint(small_seed, tmp_path):
    actionlint = tool("actionlint")
    generate(small_seed, tmp_path / "team", "per-team", "github")
    generate(small_seed, tmp_path / "mono", "monorepo", "github")
    files = sorted((tmp_path / "team").glob("*/.github/workflows/*.yml")) + sorted(
        (tmp_path / "mono/.github/workflows").glob("*.yml"))
    assert len(files) == 4 + 5
    done = subprocess.run([actionlint, "-no-color", *map(str, files)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = write_file(tmp_path / "bad/.github/workflows/bad.yml", "on: push\njobs:\n  a:\n    needs: missing\n"
                     "    runs-on: ubuntu-latest\n    steps: [{run: echo}]\n")
    assert subprocess.run([actionlint, str(bad)], capture_output=True).returncode != 0

    flow = yaml.safe_load((tmp_path / "team/architects/.github/workflows/layerwise.yml").read_text())
    assert flow["on"]["repository_dispatch"] == {"types": ["layerwise-parent-pushed"]}
    trigger = flow["jobs"]["trigger-ai-tools-env-anaconda"]
    assert trigger["needs"] == "build-ai-tools-env-anaconda"
    step = trigger["steps"][1]
    assert step["run"] == 'ci/trigger.sh ai-tools/env-anaconda "$PARENT_DIGEST" ai/ml'
    assert step["env"]["LAYERWISE_DISPATCH_TOKEN"] == "${{ secrets.LAYERWISE_DISPATCH_TOKEN }}"
    mono = yaml.safe_load((tmp_path / "mono/.github/workflows/ai-tools-env-anaconda-dust.yml").read_text())
    assert mono["on"]["push"]["paths"] == ["images/ai-tools/env-anaconda-dust/**"]
    assert mono["jobs"]["trigger"]["steps"][1]["run"].endswith("ai-app1.yml ai-app2.yml")


def test_trigger_script_dispatches_through_the_rest_api_with_the_secret_token(small_seed, tmp_path, serve):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    generate(small_seed, tmp_path / "r", "per-team", "github")
    server = serve(lambda method, path, query, headers: (204, {}, b""))
    env = {**os.environ, "GITHUB_API_URL": f"http://{server.host}", "LAYERWISE_DISPATCH_TOKEN": "t0ken",
           "GITHUB_REPOSITORY": "ai/mono", "GITHUB_REF_NAME": "main"}
    done = subprocess.run(["ci/trigger.sh", "library/python3", "sha256:abc", "ai/architects", "child.yml"],
                          cwd=tmp_path / "r/secops", env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (m1, p1, _, h1), (m2, p2, _, _) = server.requests
    assert (m1, p1) == ("POST", "/repos/ai/architects/dispatches")
    assert h1["Authorization"] == "Bearer t0ken"
    assert (m2, p2) == ("POST", "/repos/ai/mono/actions/workflows/child.yml/dispatches")
    # Without the secret it stops before any request.
    env.pop("LAYERWISE_DISPATCH_TOKEN")
    done = subprocess.run(["ci/trigger.sh", "library/python3", "sha256:abc", "ai/architects"],
                          cwd=tmp_path / "r/secops", env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "LAYERWISE_DISPATCH_TOKEN" in done.stderr and len(server.requests) == 2


@pytest.mark.corpora
def test_an_imported_corpus_family_becomes_repositories_too(tmp_path):
    corpus = CORPORA / "GoogleCloudPlatform__microservices-demo"
    if not corpus.is_dir():
        pytest.skip(f"{corpus} is not there")
    assert run_cli("import", str(corpus), "--refactor-to", str(tmp_path / "imp")).returncode == 0
    result = generate(tmp_path / "imp", tmp_path / "r", "per-team", "gitlab")
    assert "wrote 2 git repositories with 2 gitlab pipeline files" in result.stdout
    teams = sorted(p.name for p in (tmp_path / "r").iterdir() if p.is_dir())
    assert teams == ["app-team", "platform"]
    app_team = json.loads((tmp_path / "r/app-team/import.json").read_text())
    platform = yaml.safe_load((tmp_path / "r/platform/.gitlab-ci.yml").read_text())
    triggers = [k for k in platform if k.startswith("trigger:app-team:")]
    assert triggers and len(app_team["bases"]) > 1
    # Its pipelines lint as the seed's do.
    generate(tmp_path / "imp", tmp_path / "gh", "monorepo", "github")
    workflows = sorted((tmp_path / "gh/.github/workflows").glob("*.yml"))
    assert len(workflows) == len(json.loads((tmp_path / "gh/import.json").read_text())["bases"])
    done = subprocess.run([tool("actionlint"), "-no-color", *map(str, workflows)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    gitlab = [tmp_path / "r/platform/.gitlab-ci.yml", tmp_path / "r/app-team/.gitlab-ci.yml"]
    done = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", *map(str, gitlab)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


# -- bad input: one error line, exit 2, nothing written

def test_an_image_without_an_owner_is_refused_and_nothing_written(write_stack, tmp_path):
    stack = write_stack("""\
        registry: localhost:5000
        project: p
        base: localhost:5000/os/busybox:latest
        categories:
          - {name: tools, owner: " "}
          - {name: code, owner: apps}
        apps:
          a: {tools: RUN echo t, code: RUN echo a}
        """)
    result = run_cli("generate", str(stack), "-o", str(tmp_path / "out"), "--layout", "per-team")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "has no owner" in result.stderr and "tools" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_target_folder_that_is_not_ours_is_left_alone(small_seed, tmp_path):
    out = tmp_path / "mine"
    write_file(out / "notes.txt", "keep me\n")
    result = run_cli("generate", str(small_seed), "-o", str(out), "--layout", "monorepo")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not a previous layerwise output" in result.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mine")]   # no temporary folder left


def test_a_previous_output_is_replaced(small_seed, tmp_path):
    generate(small_seed, tmp_path / "r", "per-team", "gitlab")
    generate(small_seed, tmp_path / "r", "monorepo", "github")
    assert (tmp_path / "r/.github/workflows").is_dir() and not (tmp_path / "r/secops").exists()


# -- affected

def affected(source, *changed):
    args = [a for c in changed for a in ("--changed", c)]
    return run_cli("affected", str(source), *args, "--json")


def test_affected_maps_a_context_file_to_the_image_copying_it_then_its_descendants(small_seed):
    doc = json.loads(affected(small_seed, "security/install.sh").stdout)
    assert [i["key"] for i in doc["images"]] == ["library/python3", "ai-tools/env-anaconda",
                                                 "ai-tools/env-anaconda-dust", "ai/app1", "ai/app2"]
    assert doc["images"][0]["reasons"] == ["security/install.sh changed (COPY security/ /opt/sec/)"]
    assert doc["images"][2]["reasons"] == ["parent ai-tools/env-anaconda rebuilt"]
    doc = json.loads(affected(small_seed, "code.1/app.py").stdout)
    assert [i["key"] for i in doc["images"]] == ["ai/app1"] and doc["family"] == 5
    doc = json.loads(affected(small_seed, "models", "app2").stdout)   # a folder, and an app by name
    assert [i["key"] for i in doc["images"]] == ["ai-tools/env-anaconda-dust", "ai/app1", "ai/app2"]
    assert doc["images"][2]["reasons"] == ["app2 named as changed", "parent ai-tools/env-anaconda-dust rebuilt"]
    text = run_cli("affected", str(small_seed), "--changed", "tools/setup.sh").stdout
    assert "4 of 5 images to rebuild" in text


def test_affected_refuses_an_unknown_path_or_image(small_seed):
    for changed in ("nope.txt", "/etc/passwd", "no-such-image"):
        result = affected(small_seed, changed)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith(f"layerwise: error: --changed {changed}:") and result.stderr.count("\n") == 1


def test_affected_in_an_import_folder_maps_dockerfiles_and_contexts(tmp_path):
    fixture = Path(__file__).parents[1] / "fixtures" / "multistage"
    assert run_cli("import", str(fixture), "--refactor-to", str(tmp_path / "imp")).returncode == 0
    spec = json.loads((tmp_path / "imp/import.json").read_text())
    base = spec["bases"][0]
    doc = json.loads(affected(tmp_path / "imp", base["dockerfile"]).stdout)
    assert doc["images"][0]["key"] == base["name"] and doc["rebuilt"] == len(doc["images"]) >= 2
    doc = json.loads(affected(tmp_path / "imp", "apps/app-a/Dockerfile").stdout)
    assert [i["key"] for i in doc["images"]] == ["imported/app-a"]


# -- plan as a graph

def test_plan_as_mermaid_and_dot(small_seed):
    text = run_cli("plan", str(small_seed), "--format", "mermaid").stdout
    assert text.startswith("flowchart BT\n")
    assert 'i1["ai-tools/env-anaconda:12<br/>owner architects<br/>own 25.0 MB"]' in text
    assert "  i1 --> i0\n" in text and "  i0 --> base\n" in text
    dot = run_cli("plan", str(small_seed), "--format", "dot").stdout
    assert dot.startswith("digraph family {") and "i3 -> i2;" in dot and "owner app-team" in dot


def test_plan_svg_through_graphviz_or_one_clear_error(small_seed, tmp_path):
    svg = tmp_path / "family.svg"
    if shutil.which("dot"):
        result = run_cli("plan", str(small_seed), "--format", "dot", "--svg", str(svg))
        assert result.returncode == 0, result.stderr
        assert svg.read_text().lstrip().startswith("<?xml") and "anaconda" in svg.read_text()
    # Without Graphviz (a PATH without dot): one error naming what to install, nothing written.
    empty = tmp_path / "bin"
    empty.mkdir()
    svg.unlink(missing_ok=True)
    result = run_cli("plan", str(small_seed), "--svg", str(svg), env={"PATH": str(empty)})
    assert result.returncode == 2 and "apt-get install graphviz" in result.stderr and not svg.exists()
