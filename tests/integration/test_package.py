"""layerwise as a package: `python -m build` gives a wheel and an sdist; the wheel installed in a fresh virtual
environment, by the oldest and the newest supported Python this machine has, runs `--version` and `plan`
outside the source tree, and finds the demo's example in its package data. Unit tier: no engine, no
registry; it needs PyPI for the dependencies and the example's wheels (as scripts/setup does). `layerwise demo` from the wheel needs the services: tests/integration/test_package_integration.py."""

from __future__ import annotations

import json
import subprocess
import tarfile
import tomllib
import zipfile

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

from conftest import ROOT, install_in_fresh_venv, oldest_and_newest_pythons

STACK = """\
registry: localhost:5000
project: portable-pkg
base: localhost:5000/os/busybox:latest
categories:
  - {name: tools, owner: platform}
  - {name: code, owner: app-team}
apps:
  a: {tools: ["RUN echo tools > /t", "ENV  A=1"], code: "RUN echo a > /a"}
  b: {tools: ["RUN echo tools > /t", "ENV  A=1"], code: "RUN echo b > /b"}
"""


def _dependencies() -> tuple[dict[str, Requirement], dict]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {Requirement(r).name: Requirement(r) for r in project["dependencies"]}, project


@pytest.mark.parametrize(("platform", "machine", "installed"), [
    ("linux", "x86_64", True), ("win32", "AMD64", True),            # where the `dockerfile` wheels are
    ("darwin", "arm64", False), ("darwin", "x86_64", False), ("linux", "aarch64", False), ("win32", "ARM64", False),
])
def test_buildkit_parser_is_a_dependency_only_where_it_has_wheels(platform, machine, installed):
    requirements, project = _dependencies()
    marker = requirements["dockerfile"].marker
    assert isinstance(marker, Marker)
    env = {"sys_platform": platform, "platform_machine": machine}
    assert marker.evaluate(env) is installed
    assert [Requirement(r).name for r in project["optional-dependencies"]["buildkit"]] == ["dockerfile"]


def test_build_gives_wheel_and_sdist_with_the_seed_example(built_package):
    (wheel,) = built_package.glob("layerwise-*.whl")
    (sdist,) = built_package.glob("layerwise-*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert "layerwise/dockerfile_parser.py" in names
    assert {"layerwise/examples/seed/layerwise.yaml", "layerwise/examples/seed/prepare.py",
            "layerwise/examples/seed/code.1/app.py"} <= set(names)
    assert not [n for n in names if n.endswith((".model", ".whl", "layerwise.state.json"))], "generated inputs"
    with tarfile.open(sdist) as tar:
        members = tar.getnames()
    top = members[0].split("/")[0]
    assert {f"{top}/examples/seed/layerwise.yaml", f"{top}/setup.py", f"{top}/src/layerwise/dockerfiles.py"} <= set(members)


@pytest.mark.parametrize(("version", "python"), oldest_and_newest_pythons(), ids=lambda v: str(v))
def test_installed_wheel_runs_outside_the_source_tree(built_package, tmp_path, version, python):
    (wheel,) = built_package.glob("layerwise-*.whl")
    bin_dir = install_in_fresh_venv(python, wheel, tmp_path / "venv")
    work = tmp_path / "work"
    work.mkdir()
    (work / "layerwise.yaml").write_text(STACK)

    def run(*args, **env):
        return subprocess.run([str(bin_dir / "layerwise"), *args], cwd=work, capture_output=True, text=True,
                              env={"PATH": str(bin_dir) + ":/usr/bin:/bin", "HOME": str(tmp_path), **env}, timeout=120)

    where = subprocess.run([str(bin_dir / "python"), "-c", "import layerwise, sys; print(layerwise.__file__, sys.version)"],
                           cwd=work, capture_output=True, text=True, check=True).stdout
    assert str(tmp_path / "venv") in where and where.split()[1].startswith(version)
    version_line = run("--version")
    assert version_line.returncode == 0, version_line.stderr
    assert "layerwise, version 0.1.0 (Dockerfile parser: buildkit)" in version_line.stdout  # this machine has its wheel
    plans = {}
    for parser in ("buildkit", "python"):
        result = run("plan", "--json", LAYERWISE_PARSER=parser)
        assert result.returncode == 0, result.stderr
        plans[parser] = json.loads(result.stdout)
    assert plans["python"] == plans["buildkit"]
    images = plans["python"]["plan"]["images"]
    assert [i["kind"] for i in images].count("app") == 2 and len(images) == 3   # one shared tools base
    assert "ENV A=1" in [s["instruction"] for i in images for s in i["steps"]]

    # The demo's example comes from the package data, prepared in the user's cache folder (no services
    # needed for that part): model generated, wheels fetched.
    seed = subprocess.run([str(bin_dir / "python"), "-c", "from layerwise.cli.demo import seed_stack; print(seed_stack())"],
                          cwd=work, capture_output=True, text=True, timeout=600,
                          env={"PATH": str(bin_dir) + ":/usr/bin:/bin", "HOME": str(tmp_path),
                               "XDG_CACHE_HOME": str(tmp_path / "cache"), "LAYERWISE_MODEL_MB": "1"})
    assert seed.returncode == 0, seed.stderr
    folder = tmp_path / "cache" / "layerwise" / "seed"
    assert seed.stdout.strip().endswith(str(folder / "layerwise.yaml"))
    assert (folder / "models" / "dust.model").stat().st_size == 1 << 20 and list((folder / "wheels").glob("*.whl"))
    assert not list(folder.rglob("__pycache__"))

    # Where the `dockerfile` wheel does not exist (macOS, ARM Linux) it is not installed: the same plan.
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "uninstall", "--yes", "--quiet", "dockerfile"],
                   check=True, capture_output=True)
    assert "(Dockerfile parser: python)" in run("--version").stdout
    without = run("plan", "--json")
    assert without.returncode == 0, without.stderr
    assert json.loads(without.stdout) == plans["buildkit"]
