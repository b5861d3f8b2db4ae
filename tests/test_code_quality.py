"""Lint, types, and the layering rule of DESIGN.md, as part of the suite."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LINTED = ["sutazai", "components", "pipelines", "dags", "sutazai_stack", "tests", "benchmarks",
          "scripts"]


def test_ruff_is_clean() -> None:
    done = subprocess.run([BIN / "ruff", "check", *LINTED], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_mypy_is_clean() -> None:
    done = subprocess.run([BIN / "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_core_library_knows_nothing_about_orchestrators() -> None:
    """sutazai/ must stay importable and testable without Airflow or Kubeflow."""
    offenders = []
    for path in (ROOT / "sutazai").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[0] in ("airflow", "kfp", "components", "pipelines",
                                                 "dags", "sutazai_stack")]
    assert offenders == []


def test_library_does_not_print() -> None:
    done = subprocess.run([BIN / "ruff", "check", "--select", "T20", "sutazai"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_every_library_folder_is_a_package() -> None:
    """setuptools' find_packages skips folders without __init__.py: a built wheel (a KFP
    component image, say) would silently lack them while the editable install works."""
    folders = [p for package in ("sutazai", "components", "pipelines", "sutazai_stack")
               for p in [ROOT / package, *(ROOT / package).rglob("*")]
               if p.is_dir() and p.name not in ("__pycache__", "compiled")]
    assert [str(p) for p in folders if not (p / "__init__.py").exists()] == []
