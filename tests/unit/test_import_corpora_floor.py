"""`layerwise import` on every corpus family must never find less than it did before the naming and
commuting work (issue 14): as many layers shared, no more base images for it.

The floor was measured on commit d1609ff (before any change of issue 14) with
`summary(import_family([CORPORA / SET]))`: `len(bases)` and `layers_shared` (each base's layers
counted once per app beyond the first), the figures `bench/import_corpora.py` prints.
"""

from __future__ import annotations

import pytest

from conftest import CORPORA
from layerwise.importing.importer import import_family, summary

# set: (base images, layers shared), measured on d1609ff as the module docstring says.
FLOOR = {
    "GoogleCloudPlatform__microservices-demo": (4, 15),
    "binnacle-icse2020_gold_docker-library-2019": (66, 333),
    "docker-library__python": (12, 24),
    "dotnet-architecture__eShopOnContainers": (5, 465),
}


@pytest.mark.corpora
@pytest.mark.parametrize("corpus", sorted(FLOOR))
def test_import_never_finds_less_than_before(corpus):
    bases, layers = FLOOR[corpus]
    doc = summary(import_family([CORPORA / corpus]))
    assert doc["layers_shared"] >= layers
    assert len(doc["bases"]) <= bases
