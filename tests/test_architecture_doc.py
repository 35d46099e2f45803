"""docs/architecture.md names every module, and names no module that is gone.

The module index there is only useful while it is complete and true: a new module must get
its row, and a removed or renamed one must lose it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("protocol", "qkd_drivers", "qkmsd", "qkms_client", "qkms_pqc", "cli", "qkmssim")
SKIPPED = {"__init__.py", "__main__.py"}

# A repo path in backticks, with at least one directory: `qkmsd/supply/_front.py`.  A bare
# file name (`__init__.py`) in prose is not a path.
_PY_PATH = re.compile(r"`((?:[\w.\-]+/)+[\w.\-]+\.py)`")


def _modules(root: Path) -> list[str]:
    """Every module of the packages as a repo path, package ``__init__`` and ``__main__`` aside."""
    found: list[str] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if path.name not in SKIPPED:
                found.append(path.relative_to(root).as_posix())
    return found


def _documented(doc: Path) -> set[str]:
    """The backticked ``*.py`` paths named in ``doc``."""
    return set(_PY_PATH.findall(doc.read_text(encoding="utf-8")))


def test_every_module_is_in_the_architecture_doc() -> None:
    modules = _modules(ROOT)
    assert modules, f"no modules found under {ROOT}"
    documented = _documented(DOC)
    missing = [module for module in modules if module not in documented]
    assert not missing, (
        f"{len(missing)} module(s) not named in {DOC.relative_to(ROOT)} "
        "(add a row to its module index):\n" + "\n".join(f"  `{m}`" for m in missing)
    )


def test_every_module_in_the_architecture_doc_exists() -> None:
    gone = sorted(path for path in _documented(DOC) if not (ROOT / path).is_file())
    assert not gone, (
        f"{len(gone)} path(s) named in {DOC.relative_to(ROOT)} do not exist "
        "(remove or rename their rows):\n" + "\n".join(f"  `{p}`" for p in gone)
    )
