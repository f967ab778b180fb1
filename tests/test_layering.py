"""The layering of DESIGN.md, held by a test: which of our packages each package may import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"catalog", "lm", "explore", "alignment", "ranking", "serving", "sim", "jobs", "bench"}
# DESIGN.md, "Layout (top level)": the packages each may import (jobs and bench may import everything)
ALLOWED = {
    "catalog": set(),
    "lm": {"catalog"},
    "explore": {"catalog", "lm"},
    "alignment": {"catalog", "lm"},
    "ranking": {"catalog"},
    "serving": {"catalog", "ranking", "explore"},
    "sim": {"catalog"},
}


def _imported_modules(package: str) -> dict[str, set[str]]:
    """Module names imported (at any depth of the file) by each file of `package`."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(path.relative_to(ROOT))] = names
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_what_design_allows(package):
    bad = {
        f"{path}: {name}"
        for path, names in _imported_modules(package).items()
        for name in names
        if name.split(".")[0] in OURS - {package} and name.split(".")[0] not in ALLOWED[package]
    }
    assert not bad, sorted(bad)


def _uses(package: str, wanted) -> list[str]:
    return sorted(
        f"{path}: {name}"
        for path, names in _imported_modules(package).items()
        for name in names
        if wanted(name)
    )


def test_serving_uses_only_the_cache_reader_of_explore():
    assert not _uses("serving", lambda name: name.split(".")[0] == "explore" and name != "explore.cache")


def test_ranking_has_no_ray():
    assert not _uses("ranking", lambda name: name.split(".")[0] == "ray")


@pytest.mark.parametrize("package", ["ranking", "catalog", "lm"])
def test_import_loads_no_llm_engine(package):
    code = f"import sys, {package}; print(sorted(m for m in ('vllm', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_sampler_does_not_import_the_trainer():
    sampler = _imported_modules("explore")["explore/sampler.py"]
    assert "explore.sft" not in sampler and "explore.model_info" in sampler, sorted(sampler)


def test_jobs_use_the_packages_public_apis():
    """jobs/ imports our packages through their __init__ (or a subpackage's, e.g. explore.cache), and only
    names the package lists in __all__: a package's public API is what its users actually need."""
    import ast
    import importlib

    ours = {"catalog", "lm", "explore", "alignment", "ranking", "serving", "sim"}
    bad = []
    for path in sorted((ROOT / "jobs").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ours):
                continue
            where = f"jobs/{path.name}:{node.lineno}"
            if not (ROOT / node.module.replace(".", "/") / "__init__.py").is_file():
                bad.append(f"{where}: from {node.module} (a module, not a package's public API)")
                continue
            public = set(getattr(importlib.import_module(node.module), "__all__", ()))
            bad += [
                f"{where}: {node.module}.{a.name} not in __all__" for a in node.names if a.name not in public
            ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", ["catalog", "lm", "explore", "alignment", "ranking", "serving", "sim"])
def test_every_public_name_exists(package):
    import importlib

    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, missing
