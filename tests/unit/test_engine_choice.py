"""How `--builder` resolves on a machine, found by what each docker CLI can do (no engine needed)."""

from __future__ import annotations

import pytest

from layerwise.errors import UserError
from layerwise.oci import engine
from layerwise.oci.engine import BuildOptions, _buildkit_error, choose_builder, find_buildkit


def fake_cli(folder, *, buildx: bool, builtin_buildkit: bool):
    """A `docker` that answers `buildx version` and `build --help` as a CLI with those abilities."""
    folder.mkdir(parents=True)
    cli = folder / "docker"
    secret = "  --secret stringArray" if builtin_buildkit else "  --network string"
    cli.write_text("#!/bin/sh\n"
                   f'if [ "$1" = buildx ]; then {"echo buildx v0.12; exit 0" if buildx else "exit 1"}; fi\n'
                   f'if [ "$1" = build ] && [ "$DOCKER_BUILDKIT" = 1 ]; then echo "{secret}"; exit 0; fi\n'
                   "exit 1\n")
    cli.chmod(0o755)
    return str(cli)


@pytest.fixture
def clis(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "_CLI_PLACES", ())
    find_buildkit.cache_clear()

    def use(*folders):
        monkeypatch.setenv("PATH", ":".join(str(f) for f in folders))
        find_buildkit.cache_clear()
    yield use
    find_buildkit.cache_clear()


def test_the_cli_is_found_by_capability_not_path_order(tmp_path, clis):
    new = fake_cli(tmp_path / "new", buildx=False, builtin_buildkit=False)    # docker 28 without buildx
    old = fake_cli(tmp_path / "old", buildx=False, builtin_buildkit=True)     # Debian's docker.io 20.10
    clis(tmp_path / "new", tmp_path / "old")
    chosen = choose_builder("auto")
    assert (chosen.kind, chosen.cli) == ("buildkit", old) and new != old
    assert "DOCKER_BUILDKIT=1" in chosen.name


def test_buildx_wins_wherever_it_is(tmp_path, clis):
    fake_cli(tmp_path / "a", buildx=False, builtin_buildkit=True)
    bx = fake_cli(tmp_path / "b", buildx=True, builtin_buildkit=False)
    clis(tmp_path / "a", tmp_path / "b")
    assert (choose_builder("buildkit").kind, choose_builder("buildkit").cli) == ("buildx", bx)


def test_no_buildkit_auto_falls_back_and_says_so_buildkit_refuses(tmp_path, clis):
    fake_cli(tmp_path / "new", buildx=False, builtin_buildkit=False)
    clis(tmp_path / "new")
    chosen = choose_builder("auto")
    assert chosen.kind == "legacy" and "no docker CLI here offers BuildKit" in chosen.note
    with pytest.raises(UserError, match="--builder buildkit: no docker CLI here offers BuildKit"):
        choose_builder("buildkit")
    assert choose_builder("legacy").kind == "legacy"


def test_bad_options_are_one_clear_error():
    with pytest.raises(UserError, match="--builder kaniko"):
        BuildOptions(builder="kaniko")
    with pytest.raises(UserError, match="--network bridge2"):
        BuildOptions(network="bridge2")


def test_the_line_that_says_why_a_buildkit_build_failed():
    log = ["#5 [2/3] RUN false", "#5 ERROR: executor failed running [/bin/sh -c false]: exit code: 1",
           "------", "error: failed to solve: executor failed running [/bin/sh -c false]: exit code: 1"]
    assert _buildkit_error(log).startswith("error: failed to solve")
    assert _buildkit_error(["just one line"]) == "just one line"
    assert engine._BUILDKIT_STEP.match("#7 [app 2/5] RUN pip install x").groups() == ("2", "5", "RUN pip install x")
    assert engine._BUILDKIT_STEP.match("#3 [2/2] COPY a b").groups() == ("2", "2", "COPY a b")
    assert engine._BUILDKIT_STEP.match("#7 0.312 Collecting x") is None
