"""The package is grouped by pipeline stage, and no stage imports a later one."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pneumo"
# Pipeline order; the top-level modules (config, flags, runner, rundir, the CLIs) may use any stage.
STAGES = ("utils", "data", "models", "metrics", "training", "evaluation", "report", "export")
TOP = "top level"


def _stage(module: str) -> str:
    """'pneumo.data.cache' -> 'data'; a module directly in pneumo/ -> TOP."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in STAGES else TOP


def _rank(stage: str) -> int:
    return STAGES.index(stage) if stage in STAGES else len(STAGES)


def _modules() -> list[str]:
    return sorted(
        ".".join(("pneumo", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        for p in PACKAGE.rglob("*.py")
    )


def _imports(module: str) -> set[str]:
    """Every pneumo module `module` imports, at module level or inside functions."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pneumo"):
            for alias in node.names:
                # `from pneumo.data import cache` imports the module pneumo.data.cache
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in _modules() else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pneumo"))
    return found


def test_every_folder_of_the_package_is_a_stage_in_the_pipeline_order():
    folders = {p.parent.relative_to(PACKAGE).parts[0] for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE}
    assert folders <= set(STAGES), f"place {sorted(folders - set(STAGES))} in STAGES, after the stages it imports"


def test_every_module_lives_in_a_stage_or_is_a_command_or_the_job():
    top = {m for m in _modules() if _stage(m) == TOP and m.removeprefix("pneumo.") not in ("pneumo", *STAGES)}
    assert top == {
        "pneumo.audit_cli",
        "pneumo.config",
        "pneumo.evaluate_cli",
        "pneumo.flags",
        "pneumo.run_config",
        "pneumo.rundir",
        "pneumo.runner",
        "pneumo.train_cli",
    }


@pytest.mark.parametrize("module", [m for m in _modules() if _stage(m) != TOP])
def test_no_stage_imports_a_later_stage_or_the_top_level(module):
    later = sorted(i for i in _imports(module) if _rank(_stage(i)) > _rank(_stage(module)))
    assert later == [], f"{module} imports {later}"


@pytest.mark.parametrize("module", _modules())
def test_every_module_imports(module):
    importlib.import_module(module)
