"""Categories of imported steps from their content: every rule of `categories.RULES` on examples,
and how `categorize` fills in the steps no rule names."""

from __future__ import annotations

import pytest

from layerwise.dockerfiles import parse_instructions
from layerwise.importing.categories import MODEL_BYTES, RULES, rule_for
from layerwise.importing.importer import categorize, in_category_order, raw_category
from layerwise.plan.model import Step

# (instruction, size of the files it copies or None, the rule's `why` expected to name it)
EXAMPLES = [
    ("RUN apt-get update && apt-get install -y curl", None, "system packages"),
    ("RUN apk add --no-cache git", None, "system packages"),
    ("RUN dnf install -y gcc && dnf clean all", None, "system packages"),
    ("RUN yum install -y make", None, "system packages"),
    ("RUN pip install -r requirements.txt", None, "Python packages"),
    ("RUN conda install -y numpy", None, "Python packages"),
    ("RUN mamba install -y -c conda-forge xarray", None, "Python packages"),
    ("RUN npm ci --omit=dev", None, "Node packages"),
    ("RUN gem install rails", None, "Ruby gems"),
    ("RUN R -e \"install.packages('ggplot2')\"", None, "R packages"),
    ("RUN go mod download", None, "Go modules"),
    ("RUN dotnet restore src/app.csproj", None, "packages"),
    ("COPY models/dust.model /models/dust.model", None, "model or data files"),
    ("COPY weights.safetensors /srv/", None, "model or data files"),
    ("COPY data/ /data/", MODEL_BYTES, "large files"),
    ("COPY requirements.txt .", None, "package manifests"),
    ("COPY package.json package-lock.json ./", None, "package manifests"),
    ("COPY go.mod go.sum ./", None, "package manifests"),
    ("COPY src/Api/Api.csproj src/Api/", None, "package manifests"),
    ("COPY app1.conf /srv/app.conf", None, "config files"),
    ("COPY settings.yaml /srv/", None, "config files"),
    ("COPY motd /etc/motd", None, "copied to /etc"),
    ("COPY . .", None, "sources"),
    ("COPY --from=build /out /out", None, "sources"),
    ("ADD src/ /app/", 1000, "sources"),
]


def _rule(text: str, size: int | None):
    ins = parse_instructions(text)[0]
    if ins.keyword == "RUN":
        return rule_for("RUN", command=" ".join(ins.args))
    return rule_for(ins.keyword, sources=ins.copy_sources, destination=ins.args[-1], size=size)


@pytest.mark.parametrize(("text", "size", "why"), EXAMPLES, ids=[e[0][:40] for e in EXAMPLES])
def test_each_rule_names_its_examples(text, size, why):
    rule = _rule(text, size)
    assert rule is not None and rule.why == why
    assert raw_category(parse_instructions(text)[0], size) == rule.category


def test_every_rule_has_an_example():
    assert {r.why for r in RULES} == {why for _, _, why in EXAMPLES}


@pytest.mark.parametrize("text", ["RUN make", "RUN ./configure && make install", "ENV A=1", "WORKDIR /app"])
def test_no_rule_names_what_content_does_not_say(text):
    assert raw_category(parse_instructions(text)[0]) is None


def test_a_small_data_file_is_code_and_a_large_one_a_model():
    assert _rule("COPY blob.dat /srv/", MODEL_BYTES - 1).category == "code"
    assert _rule("COPY blob.dat /srv/", MODEL_BYTES).category == "model"


def _chain(*texts: str) -> list[Step]:
    return [Step(instruction=i.text, category=raw_category(i)) for i in (parse_instructions(t)[0] for t in texts)]


def test_content_wins_over_position():
    """The issue's case: a package install on top of the code is tools or library, not code."""
    chain = categorize(_chain("FROM x", "COPY . /src", "RUN make", "RUN apt-get install -y jq",
                              "RUN mamba install -y numpy", "COPY model.onnx /m/", "CMD run"))
    assert [s.category for s in chain] == ["os", "code", "code", "tools", "library", "model", "config"]
    # A stack file lists categories in order: there the steps above the code stay code.
    assert [s.category for s in in_category_order(chain)] == [
        "os", "code", "code", "code", "code", "code", "config"]


def test_copy_read_by_a_library_install_is_library():
    chain = categorize(_chain("FROM x", "COPY src/ /src/", "RUN pip install /src", "COPY . /app"))
    assert [s.category for s in chain] == ["os", "library", "library", "code"]
