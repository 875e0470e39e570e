import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "examples" / "seed"
CORPORA = ROOT.parent / "shared" / "corpora"


@pytest.fixture
def write_stack(tmp_path):
    """Write a stack file (and any context files) into a temporary folder; return its path."""

    def write(text: str, files: dict[str, str] | None = None) -> Path:
        for rel, content in (files or {}).items():
            p = tmp_path / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content)
        path = tmp_path / "layerwise.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layerwise", *args], capture_output=True, text=True,
                          cwd=cwd)


@pytest.fixture
def small_seed(tmp_path):
    """A copy of the seed example with a 1 MiB model and no wheels (fast to digest and copy)."""
    import shutil

    dest = tmp_path / "seed"
    shutil.copytree(SEED, dest, ignore=shutil.ignore_patterns("*.model", "*.tmp", "layerwise.state.json"))
    subprocess.run([sys.executable, str(dest / "prepare.py"), str(dest), "--model-mb", "1", "--skip-wheels"],
                   check=True, capture_output=True)
    return dest / "layerwise.yaml"


REGISTRY = "localhost:5000"


def services_problem() -> str | None:
    """Why the real engine and registry cannot be used, or None when both answer."""
    import httpx
    try:
        import docker
        docker.from_env(version="auto", timeout=5).ping()
    except Exception as e:   # noqa: BLE001 - any failure means "not available"
        return f"Docker Engine not answering ({type(e).__name__}); run: sudo scripts/services start"
    try:
        httpx.get(f"http://{REGISTRY}/v2/", timeout=5).raise_for_status()
    except Exception as e:   # noqa: BLE001
        return f"registry on {REGISTRY} not answering ({type(e).__name__}); run: sudo scripts/services start"
    return None


@pytest.fixture(scope="session")
def services():
    """The real Docker Engine and registry. Outside CI a missing service skips; in CI it fails."""
    import os
    problem = services_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return REGISTRY


@pytest.fixture
def namespace():
    """A registry namespace of its own for one test, so tests never see each other's tags."""
    import uuid
    return "t" + uuid.uuid4().hex[:10]
