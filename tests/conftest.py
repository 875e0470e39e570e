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
    shutil.copytree(SEED, dest, ignore=shutil.ignore_patterns("*.model", "*.whl", "*.tmp"))
    subprocess.run([sys.executable, str(dest / "prepare.py"), str(dest), "--model-mb", "1", "--skip-wheels"],
                   check=True, capture_output=True)
    return dest / "layerwise.yaml"
