"""`layerwise generate` and `layerwise demo` output: folders, FROM chain, round trip, determinism."""

import json
import os

from conftest import run_cli
from layerwise.dockerfiles import parse_instructions
from layerwise.oci.mutate import FIXED_MTIME
from layerwise.plan.planner import build_plan
from layerwise.plan.spec import load_stack


def _tree_bytes(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = (f.read(), os.stat(p).st_mode)
    return out


def test_generate_seed_writes_the_chain(small_seed, tmp_path):
    out = tmp_path / "out"
    result = run_cli("generate", str(small_seed), "-o", str(out))
    assert result.returncode == 0, result.stderr
    dockerfiles = sorted(str(p.relative_to(out)) for p in out.rglob("Dockerfile"))
    assert dockerfiles == ["ai-tools/env-anaconda-dust/Dockerfile", "ai-tools/env-anaconda/Dockerfile",
                           "ai/app1/Dockerfile", "ai/app2/Dockerfile", "library/python3/Dockerfile"]

    def from_line(key):
        text = (out / key / "Dockerfile").read_text()
        return next(l for l in text.splitlines() if l.startswith("FROM "))

    assert from_line("library/python3") == "FROM localhost:5000/os/python3:bookworm"
    assert from_line("ai-tools/env-anaconda") == "FROM localhost:5000/library/python3:latest"
    assert from_line("ai-tools/env-anaconda-dust") == "FROM localhost:5000/ai-tools/env-anaconda:12"
    assert from_line("ai/app1") == from_line("ai/app2") == "FROM localhost:5000/ai-tools/env-anaconda-dust:runtime"
    # Context files travel with the image that copies them, with fixed mtimes and their modes.
    model = out / "ai-tools/env-anaconda-dust/models/dust.model"
    assert model.stat().st_size == 1 << 20 and model.stat().st_mtime == FIXED_MTIME
    assert os.access(out / "library/python3/security/install.sh", os.X_OK)
    assert not (out / "ai/app1/models").exists()
    assert "/ai-tools/env-anaconda/ @architects" in (out / "CODEOWNERS").read_text()
    bake = (out / "docker-bake.hcl").read_text()
    assert '"localhost:5000/ai-tools/env-anaconda:12" = "target:ai-tools_env-anaconda"' in bake
    assert json.loads((out / "plan.json").read_text())["schema"] == "layerwise.plan/v1"


def test_generated_dockerfiles_parse_back_into_the_same_steps(small_seed, tmp_path):
    out = tmp_path / "out"
    assert run_cli("generate", str(small_seed), "-o", str(out)).returncode == 0
    plan = build_plan(load_stack(small_seed))
    for img in plan.images:
        parsed = parse_instructions((out / img.key / "Dockerfile").read_text())
        assert parsed[0].keyword == "FROM" and parsed[0].args[0] == img.base
        assert parsed[1].text == "ARG SOURCE_DATE_EPOCH=946684800"
        assert [i.text for i in parsed[2:]] == [s.instruction for s in img.steps]


def test_generate_twice_gives_identical_bytes(small_seed, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("generate", str(small_seed), "-o", str(a)).returncode == 0
    assert run_cli("generate", str(small_seed), "-o", str(b)).returncode == 0
    assert _tree_bytes(a) == _tree_bytes(b)
    # Regenerating into a previous output replaces it in place.
    (small_seed.parent / "app1.conf").write_text("name=app1\nport=9999\n")
    assert run_cli("generate", str(small_seed), "-o", str(a)).returncode == 0
    assert "9999" in (a / "ai/app1/app1.conf").read_text()
    assert not list(tmp_path.glob(".a.*"))   # no temporary folders left behind


def test_plan_json_output_is_stable(small_seed):
    first = run_cli("plan", str(small_seed), "--json")
    second = run_cli("plan", str(small_seed), "--json")
    assert first.returncode == 0 and first.stdout == second.stdout
    doc = json.loads(first.stdout)
    assert [i["ref"] for i in doc["plan"]["images"]][0] == "localhost:5000/library/python3:latest"
    assert {s["name"] for s in doc["cost"]["scenarios"]} == {"one host per app", "all apps on one host"}


def test_plan_prints_tree_and_savings(small_seed):
    result = run_cli("plan", str(small_seed))
    assert result.returncode == 0, result.stderr
    for text in ("library/python3:latest", "ai-tools/env-anaconda:12", "ai-tools/env-anaconda-dust:runtime",
                 "ai/app1:latest", "ai/app2:latest", "all apps on one host", "add one app", "floor"):
        assert text in result.stdout
