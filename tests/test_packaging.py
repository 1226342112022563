"""gc10lib as a library: its declared dependencies are what it imports, its public API is small and
documented, and a regular (not editable) install runs from any folder."""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

import gc10lib

#: the installed metadata's requirements: (name, extra or None)
REQUIRES = [
    (r.split(";")[0], (re.search(r"extra == .([\w-]+).", r) or [None, None])[1]) for r in md.requires("gc10lib") or []
]
#: declared but never imported by gc10lib, each for a reason
RUNTIME_ONLY = {
    "jupyterlab": "the notebook UI the notebooks are stepped through in",
    "ipykernel": "the python3 kernel papermill executes the notebooks with",
    "ipywidgets": "tqdm.auto's progress widget inside Jupyter",
    "tabulate": "pandas.DataFrame.to_markdown, used for every markdown table",
}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imported_modules() -> set[str]:
    """Top-level modules gc10lib imports anywhere (module level or inside functions)."""
    found = set()
    for path in (REPO / "gc10lib").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"gc10lib", "__future__"}


def test_declared_dependencies_are_exactly_what_gc10lib_imports():
    dists = md.packages_distributions()
    imported = {_name(dists[m][0]) for m in _imported_modules()}
    required = {_name(r) for r, extra in REQUIRES if extra is None}
    extras = {_name(r) for r, extra in REQUIRES if extra not in (None, "dev")}
    assert not imported - required - extras, f"imported but not declared: {imported - required - extras}"
    unused = required - imported - set(RUNTIME_ONLY)
    assert not unused, f"declared but never imported (remove, or say why in RUNTIME_ONLY): {unused}"
    assert set(RUNTIME_ONLY) <= required


def test_the_public_api_is_small_documented_and_lazy():
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", gc10lib.__version__)
    for name in gc10lib.__all__:
        if name == "__version__":
            continue
        obj = getattr(gc10lib, name)
        assert obj.__doc__ and ">>>" in obj.__doc__, f"{name}: a docstring with an example"
    code = "import sys, gc10lib; print('tensorflow' in sys.modules, gc10lib.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False"  # importing gc10lib does not load TensorFlow


def test_bundled_configs_and_notebooks_are_found_and_a_users_notebooks_folder_works(tmp_path, capsys):
    from gc10lib import cli, pipeline, resources

    assert (resources.configs_dir() / "demo.yaml").is_file()
    assert (resources.notebooks_dir() / "02_finetune.ipynb").is_file()
    own = tmp_path / "mine"
    own.mkdir()
    shutil.copy(resources.notebooks_dir() / "01_eda.ipynb", own / "01_look.ipynb")
    args = ["run", "--dry-run", "--runs-root", str(tmp_path / "runs"), "-p", "notebooks_dir", str(own)]
    assert cli.main(args) == 0
    assert "01_look (01_look.ipynb)" in capsys.readouterr().out
    assert cli.main(["run", "--dry-run", "-p", "notebooks_dir", str(tmp_path / "nowhere")]) == 2
    assert "notebooks_dir is not a folder" in capsys.readouterr().err
    assert pipeline.notebook_folder({}) == resources.notebooks_dir()


@pytest.mark.slow
def test_a_regular_install_runs_from_any_folder(tmp_path):
    """``pip install <clone>`` (not editable) into a fresh venv, then from a folder outside the clone:
    the version, ``gc10 run --list-configs`` and ``gc10 run --config demo --dry-run``."""
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    venv = tmp_path / "venv"
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=300)
    src = tmp_path / "src"  # a copy without the clone's build leftovers and virtualenv
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "runs", ".cache", "*.egg-info", "build"))
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(src)],
        check=True,
        env=env,
        timeout=1200,
    )
    shutil.rmtree(src)  # nothing of the source tree is left to find
    away = tmp_path / "elsewhere"
    away.mkdir()

    def run(*cmd):
        r = subprocess.run(cmd, cwd=away, capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    version = run(str(venv / "bin" / "python"), "-c", "import gc10lib; print(gc10lib.__version__)").strip()
    assert version == gc10lib.__version__
    listed = run(str(venv / "bin" / "gc10"), "run", "--list-configs")
    assert "demo" in listed and "xsdd" in listed
    planned = run(str(venv / "bin" / "gc10"), "run", "--config", "demo", "--dry-run")
    assert "02_finetune_mobilenet (02_finetune.ipynb)" in planned and "06_distill" in planned
    assert not (away / "runs").exists()


def test_the_examples_in_the_docs_call_only_public_names():
    import gc10lib.api

    texts = [gc10lib.__doc__ or "", gc10lib.api.__doc__ or ""]
    texts += [getattr(gc10lib, n).__doc__ or "" for n in gc10lib.__all__ if n != "__version__"]
    texts.append((REPO / "notebooks" / "examples" / "use_gc10lib.ipynb").read_text())
    called = {m for t in texts for m in re.findall(r"gc10lib\.(\w+)\(", t)}
    assert called and called <= set(gc10lib.__all__) | {"RunFolder"}, called - set(gc10lib.__all__)
