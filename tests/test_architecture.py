"""The import rules of the package layout (docs/architecture.md), read from the source.

Every module under ``src/intvit`` is parsed with :mod:`ast` (nothing is imported), each
import, relative ones resolved and those inside functions included, is checked against
the rules:

- no library module imports the command line, ``intvit.cli`` (only ``intvit/cli/`` itself
  and the ``python -m intvit`` entry point ``intvit/__main__.py`` may), nor ``argparse``:
  flags are parsed in the CLI, library functions take typed arguments, never an
  ``argparse.Namespace``;
- nothing under ``intvit/engine/`` imports ``intvit.train`` (an exported program does not
  depend on how it was trained);
- nothing under ``intvit/models/`` imports ``intvit.engine``: a model describes its
  program to a builder it is handed (``models/program_builder.py``);
- ``intvit/arith/`` and ``intvit/approx/`` (integer primitives and kernels: pure
  functions on tensors) import no ``torch.nn`` module code; ``torch.nn.functional``, a
  set of functions, is allowed.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "intvit"
ENTRY_POINTS = {"intvit.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file; ``from M import a``
    gives ``M`` and ``M.a`` (``a`` may be a submodule)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def torch_nn_module(module: str) -> bool:
    return within(module, "torch.nn") and not within(module, "torch.nn.functional")


def violations(path: Path) -> list[str]:
    """The rules ``path`` breaks, one line each: module, line and the import."""
    name = module_name(path)
    rules = []
    if not within(name, "intvit.cli") and name not in ENTRY_POINTS:
        rules.append(("a library module imports the command line",
                      lambda m: within(m, "intvit.cli")))
        rules.append(("a library module parses flags (argparse belongs in intvit.cli)",
                      lambda m: within(m, "argparse")))
    if within(name, "intvit.engine"):
        rules.append(("the engine imports training", lambda m: within(m, "intvit.train")))
    if within(name, "intvit.models"):
        rules.append(("a model imports the engine", lambda m: within(m, "intvit.engine")))
    if within(name, "intvit.arith") or within(name, "intvit.approx"):
        rules.append(("arith/approx import torch.nn module code", torch_nn_module))
    found: dict[tuple[int, str], str] = {}  # (line, rule) -> the first import breaking it
    for line, target in imports(path):
        for why, broken in rules:
            if broken(target):
                found.setdefault((line, why), f"{name} (line {line}) imports {target}: {why}")
    return list(found.values())


def test_the_package_keeps_its_import_rules():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 50  # the whole package was read
    found = [v for path in modules for v in violations(path)]
    assert found == [], "\n".join(found)


@pytest.mark.parametrize("where,source,needle", [
    ("engine/fake.py", "from ..cli.common import write_json\n", "imports the command line"),
    ("analysis/fake.py", "def f():\n    from intvit import cli\n", "imports the command line"),
    ("train/fake.py", "import argparse\n", "parses flags"),
    ("engine/fake.py", "from ..train.loop import run_training\n", "engine imports training"),
    ("engine/sub/fake.py", "from ...train import options\n", "engine imports training"),
    ("models/fake.py", "from ..engine.lowering import Builder\n", "model imports the engine"),
    ("arith/fake.py", "from torch import nn\n", "torch.nn module code"),
    ("approx/fake.py", "import torch.nn as nn\n", "torch.nn module code"),
])
def test_the_check_names_the_module_and_the_import(tmp_path, monkeypatch, where, source,
                                                   needle):
    """A made-up module that breaks a rule is reported, with its name and the import."""
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    path = tmp_path / "intvit" / where
    path.parent.mkdir(parents=True)
    path.write_text(source)
    found = violations(path)
    assert len(found) == 1 and needle in found[0], found
    assert found[0].startswith("intvit." + where.removesuffix(".py").replace("/", "."))


@pytest.mark.parametrize("where,source", [
    ("cli/fake.py", "import argparse\nfrom ..train.loop import run_training\n"
                    "from .common import write_json\n"),
    ("__main__.py", "from .cli import main\n"),
    ("arith/fake.py", "import torch.nn.functional as F\n"),
    ("train/fake.py", "from ..engine import export_program\n"),
])
def test_what_the_rules_allow(tmp_path, monkeypatch, where, source):
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    path = tmp_path / "intvit" / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    assert violations(path) == []
