"""The packages' public names: each `__init__` exports them lazily (PEP 562) and completely.

Importing a package must import none of its modules (`uploader load` forks before SQLAlchemy is imported,
`uploader --help` stays fast); every name in `__all__` resolves; and the `if TYPE_CHECKING:` imports that
type checkers (and import-linter) read name exactly the modules `_EXPORTS` imports at run time.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import uploader

PACKAGES = ["uploader.api", "uploader.cli", "uploader.ledger", "uploader.load", "uploader.manifest", "uploader.send"]


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_a_package_imports_none_of_its_modules(package: str) -> None:
    code = (
        f"import sys, {package}\n"
        # uploader._lazy is the lazy-export mechanism itself (a few lines, no imports of its own)
        f"loaded = sorted(m for m in sys.modules if m.startswith('uploader.')\n"
        f"                and m not in ({package!r}, 'uploader._lazy'))\n"
        "heavy = sorted(m for m in ('sqlalchemy', 'httpx', 'aiohttp', 'pandas', 'pyarrow') if m in sys.modules)\n"
        "print(loaded, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves_from_its_module(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        source = importlib.import_module(module._EXPORTS[name])
        assert value is getattr(source, name), name
    with pytest.raises(AttributeError):
        getattr(module, "no_such_name")  # noqa: B009 - a literal name no type checker should resolve


@pytest.mark.parametrize("package", PACKAGES)
def test_type_checking_imports_match_the_exports(package: str) -> None:
    path = Path(uploader.__file__).parent / package.split(".")[1] / "__init__.py"
    tree = ast.parse(path.read_text())
    (block,) = [n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]
    imported = {
        alias.name: node.module for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    assert imported == importlib.import_module(package)._EXPORTS
