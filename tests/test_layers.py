"""The package's layering (docs/DESIGN.md, "Layers"): the planning layers work without torch, no module
imports a higher layer, and framework imports live only in ``integrations/``."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "tasp_plugin"
BLOCK_TORCH = "import sys; sys.modules['torch'] = None; "

# bottom to top, as in docs/DESIGN.md; a module may import its own layer and lower ones
LAYERS = [
    {"schedules"},
    {"planning"},
    {"costmodel"},
    {"kernels"},
    {"topology"},
    {"comm"},
    {"engine"},
    {"api", "sharding", "checks"},
    {"compat", "training", "bench", "cli"},
    {"integrations"},
]
FRAMEWORKS = {"megatron", "deepspeed", "transformers"}
TORCH_FREE = {"schedules", "planning", "costmodel"}


def _layer(part: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if part in names)


def _imports(path: Path) -> list[tuple[str, int]]:
    """``(absolute module name, line)`` of every import in ``path`` (relative imports resolved)."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join((*base, node.module)) if node.module else ".".join(base)
            found.append((module, node.lineno))
    return found


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "__init__.py")


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_import_and_frameworks_only_in_integrations(path):
    part = path.relative_to(PACKAGE).with_suffix("").parts[0]
    for module, line in _imports(path):
        top = module.split(".")[0]
        where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
        if top in FRAMEWORKS:
            assert part == "integrations", where
        if top == "torch":
            assert part not in TORCH_FREE, where
        if top == "tasp_plugin" and "." in module:
            target = module.split(".")[1]
            assert _layer(target) <= _layer(part), where


def test_planning_and_costmodel_import_without_torch():
    code = BLOCK_TORCH + "import tasp_plugin.planning, tasp_plugin.costmodel, tasp_plugin.compat.seed_helpers"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tasp_plan_runs_without_torch():
    code = BLOCK_TORCH + "from tasp_plugin.cli import main; sys.exit(main())"
    args = ["plan", "--world-size", "8", "--gpus-per-node", "4", "--interconnect", "h100"]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "hamilton_multinode" in proc.stdout and "cost model on 2x4 H100" in proc.stdout
