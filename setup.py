"""Only what pyproject.toml cannot say: the wheel carries the seed example (examples/seed) as package data,
layerwise/examples/seed, for `layerwise demo`; the repository keeps it where it is. The files it generates
(the 256 MiB model, the fetched wheels) are left out: the demo makes them on first use."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SEED = Path(__file__).resolve().parent / "examples" / "seed"
GENERATED = shutil.ignore_patterns("*.model", "*.whl", "*.tmp", "layerwise.state.json", "__pycache__")


class BuildWithSeed(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:   # an editable install finds examples/ in the checkout itself
            shutil.copytree(SEED, Path(self.build_lib) / "layerwise" / "examples" / "seed", ignore=GENERATED,
                            dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithSeed})
