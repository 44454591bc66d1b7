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


def test_a_rerun_that_sends_nothing_imports_no_http_library(tmp_path: Path) -> None:
    """A rerun over a finished ledger checks its endpoint and its rows' signed URLs, and sends nothing: it must
    not pay for importing aiohttp and httpx (api.endpoint and api.payload hold what it needs)."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("reference_id,image_url\n" + "".join(f"r{i},https://x.test/{i}.jpg\n" for i in range(5)))
    ledger = tmp_path / "l.db"
    common = [str(manifest), "--project-id", "p", "--work-flow-id", "wf", "--ledger", str(ledger)]
    subprocess.run([sys.executable, "-m", "uploader", "load", *common], check=True, capture_output=True)
    import sqlite3

    with sqlite3.connect(ledger) as db:
        db.execute("UPDATE jobs SET status = 'succeeded', job_id = 'job-' || id, attempts = 1")
    code = (
        "import sys\nfrom uploader.cli import main\nsys.argv = sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in ('httpx', 'aiohttp') if m in sys.modules), file=sys.stderr)"
    )
    argv = ["uploader", "run", *common, "--base-url", "http://127.0.0.1:9", "--api-key", "k", "--json"]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    assert '"requests": 0' in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "[]"
