"""Build decisions without an engine: ordering, skip logic, reasons, --only, and refusals."""
import pytest

STACK = """\
registry: localhost:5000
project: t
base: localhost:5000/os/busybox:latest
categories:
  - {name: tools, owner: p}
  - {name: code, owner: a}
apps:
  a: {tools: RUN echo tools, code: RUN echo a}
  b: {tools: RUN echo tools, code: RUN echo b}
"""


@pytest.mark.integration
def test_registry_down_is_one_clear_error(services, write_stack):
    from conftest import run_cli
    path = write_stack(STACK.replace("registry: localhost:5000", "registry: localhost:5999"))
    result = run_cli("build", str(path), "--push")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "registry localhost:5999 is not answering" in result.stderr
