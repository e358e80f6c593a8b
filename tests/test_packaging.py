"""What `pip install .` gets must run every command (issue #20): every third-party module the
package imports is declared in pyproject.toml, and one declared only in an extra is imported
where a missing install is one line naming that extra."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")


def _requirement_name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {_requirement_name(r) for r in project["dependencies"]}
    extras = {name: {_requirement_name(r) for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    return base, extras


def _imports() -> dict[str, set[Path]]:
    """Top-level third-party module -> the package files importing it."""
    stdlib = set(sys.stdlib_module_names)
    found: dict[str, set[Path]] = {}
    for file in (ROOT / "vgpcompile").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top != "vgpcompile":
                    found.setdefault(top, set()).add(file)
    return found


def _distribution(module: str) -> str:
    dists = importlib.metadata.packages_distributions().get(module)
    if not dists:  # the module's own name is the distribution's (transformers, onnx)
        return module.lower()
    return dists[0].lower().replace("_", "-")


def test_every_runtime_import_is_declared():
    base, extras = _declared()
    for module, files in sorted(_imports().items()):
        dist = _distribution(module)
        if dist in base:
            continue
        named = [name for name, reqs in extras.items() if dist in reqs and name != "dev"]
        assert named, f"{module} ({dist}) is imported by {sorted(map(str, files))} and declared nowhere"
        for file in files:  # the importing file tells the user which extra to install
            text = file.read_text()
            assert any(f"vgpcompile[{name}]" in text for name in named), (file, module, named)


def test_diagnose_needs_no_extra():
    base, _ = _declared()
    assert {"tqdm", "matplotlib"} <= base


def test_a_feature_behind_an_extra_fails_with_one_line_naming_it(monkeypatch, tmp_path):
    from torch import nn

    from vgpcompile import UsageError, export_onnx, vgpcompile

    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the onnx extra were not installed
    model = vgpcompile(nn.Sequential(nn.Linear(4, 4), nn.Tanh()), passes=["gpn"])
    with pytest.raises(UsageError) as err:
        export_onnx(model, tmp_path / "m.onnx", (torch.randn(2, 4),))
    assert "pip install 'vgpcompile[onnx]'" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "m.onnx").exists()


def test_ci_runs_the_readme_test_command_then_a_minimal_install():
    ci = (ROOT / ".ci" / "run").read_text()
    main = ci.index("python -m pytest -q")
    assert "pip install --quiet -e '.[dev,onnx,zoo,tat]'" in ci[:main]
    minimal = ci[main:]
    assert "-m venv" in minimal and "torch==2.13.0" in minimal and "pip install --quiet ." in minimal
    assert ".ci/minimal_install.py" in minimal
