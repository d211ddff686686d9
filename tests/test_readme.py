"""Every Python snippet in README.md and docs/*.md runs as written.

A snippet is a fenced block opened by exactly three backticks and ``python``; fragments that are not meant to
run use ``bash`` or ``text`` fences. Snippets that start processes (``torch.multiprocessing``) are marked
``distributed``, so the inner loop (``-m "not distributed and not slow"``) runs only the quick ones.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tasp_plugin.training.launch import free_port

ROOT = Path(__file__).parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _snippets():
    params = []
    for doc in DOCUMENTS:
        blocks = re.findall(r"^```python\n(.*?)^```", doc.read_text(), flags=re.S | re.M)
        for index, code in enumerate(blocks):
            spawns = "torch.multiprocessing" in code or "init_process_group" in code
            marks = [pytest.mark.distributed] if spawns else []
            params.append(pytest.param(code, id=f"{doc.name}-{index}", marks=marks))
    return params


@pytest.mark.parametrize("code", _snippets())
def test_snippet_runs(code, tmp_path):
    code = re.sub(r'"295[0-9][0-9]"', lambda _: f'"{free_port()}"', code)
    script = tmp_path / "snippet.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_ci_runs_the_readme_test_command():
    """`.ci/run` runs the README's test command (install, then the suite) on the newest line, with ruff and mypy
    before the tests, and the integration tests on the oldest line."""
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.endswith("python -m pytest -q"))
    install, tests = command.split(" && ")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    start = ci.index(install)
    assert ci[start:start + 4] == [install, "ruff check .", "mypy", tests]
    assert "megatron-core==0.16.1" in ci[ci.index("python -m pytest -q -m integration") - 1]
