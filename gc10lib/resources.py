"""gc10lib's own notebooks and configs, wherever gc10lib is installed.

In a clone (``pip install -e .``) they are the clone's ``notebooks/`` and ``configs/``, so edits
take effect at once. A regular install (``pip install .`` or from git) ships them inside the
package as ``gc10lib.notebooks`` and ``gc10lib.configs`` (``pyproject.toml`` maps those packages
onto the two folders), found with :mod:`importlib`. A user's own notebooks folder
(``notebooks_dir`` in a config) or config file (a path) is used as given.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from gc10lib.errors import SetupError

PACKAGE_ROOT = Path(__file__).resolve().parent
#: the folder above the package: a clone's root in an editable install, site-packages otherwise
REPO_ROOT = PACKAGE_ROOT.parent


def bundled(name: str) -> Path:
    """The folder of gc10lib's own ``notebooks`` or ``configs``: the packaged copy when gc10lib is
    installed as a wheel, else the clone's folder beside the package."""
    try:
        spec = importlib.util.find_spec(f"gc10lib.{name}")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    clone = REPO_ROOT / name
    if clone.is_dir() and (REPO_ROOT / "pyproject.toml").is_file():
        return clone
    raise SetupError(f"gc10lib's {name} folder is missing from this install; reinstall gc10lib (pip install gc10lib)")


def notebooks_dir(override: str | Path | None = None) -> Path:
    """The notebooks a run executes: ``override`` (a user's own folder) or gc10lib's own."""
    if override:
        folder = Path(override).expanduser().resolve()
        if not folder.is_dir():
            raise SetupError(f"{folder}: notebooks_dir is not a folder")
        return folder
    return bundled("notebooks")


def configs_dir() -> Path:
    """gc10lib's own configs (``gc10 run --config NAME`` looks here after the path NAME)."""
    return bundled("configs")
