"""`layerwise demo` from the wheel, installed in a fresh virtual environment outside the source tree: the seed
example comes from the package data, is copied to the user's cache folder and prepared there (model
generated, wheels fetched from PyPI), then built, pushed, run and pulled for real."""

from __future__ import annotations

import os
import subprocess

from conftest import install_in_fresh_venv, oldest_and_newest_pythons


def _squeezed(text: str) -> str:
    return "".join(text.split())


def test_demo_runs_from_the_installed_wheel(services, built_package, tmp_path):
    (wheel,) = built_package.glob("layerwise-*.whl")
    _, python = oldest_and_newest_pythons()[0]
    bin_dir = install_in_fresh_venv(python, wheel, tmp_path / "venv")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "LAYERWISE_MODEL_MB": "16",
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run([str(bin_dir / "layerwise"), "demo", "-o", "demo-out"], cwd=work, env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seed = tmp_path / "cache" / "layerwise" / "seed"
    assert (seed / "models" / "dust.model").stat().st_size == 16 << 20       # generated, not shipped
    assert list((seed / "wheels").glob("*.whl"))
    assert not list(seed.rglob("__pycache__")), "pip's bytecode of the packaged example stays out of the apps' code"
    out = _squeezed(result.stdout)                 # off a terminal the report wraps at 120 columns
    assert _squeezed(f"The seed's App1/App2 family ({seed / 'layerwise.yaml'})") in out
    assert (work / "demo-out" / "plan.json").is_file()
    for app in ("app1", "app2"):
        assert _squeezed(f"$ docker run --network none localhost:5000/ai/{app}") in out
    assert _squeezed("docker, layered: warm pull") in out
    assert (seed / "bench-pull" / "bench-pull.json").is_file()
