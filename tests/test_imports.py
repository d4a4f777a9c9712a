"""Every module imports, and every public name the README shows imports from where the README says."""

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import trl_rankalign


MODULES = sorted(
    m.name for m in pkgutil.walk_packages(trl_rankalign.__path__, "trl_rankalign.") if not m.name.endswith("__main__")
)
README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def test_readme_imports():
    statements = set(re.findall(r"^from (trl_rankalign[\w.]*) import ([\w, ]+)$", README, flags=re.MULTILINE))
    dotted = set(re.findall(r"`(trl_rankalign(?:\.\w+)+)`", README)) | set(
        re.findall(r"`(trl_rankalign(?:\.\w+)+)\(", README)
    )
    assert statements and dotted
    for module, names in statements:
        imported = importlib.import_module(module)
        for name in names.split(","):
            assert hasattr(imported, name.strip()), f"README: from {module} import {name.strip()}"
    for path in dotted:
        module, _, attribute = path.rpartition(".")
        try:
            importlib.import_module(path)  # a module
        except ModuleNotFoundError:
            assert hasattr(importlib.import_module(module), attribute), f"README names {path}"
