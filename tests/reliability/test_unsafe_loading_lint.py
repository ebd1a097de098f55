"""Lint: nothing a tenant supplies is ever unpickled or run as code.

Datasets are JSONL read by the validator; model and adapter weights are safetensors; remote
code is never trusted. This test scans every package for the calls that would break that:
``pickle.load``/``pickle.loads`` (and ``dill``, ``joblib.load``), ``torch.load`` without
``weights_only=True``, ``numpy.load`` with ``allow_pickle=True``, ``yaml.load`` without a safe
loader, ``eval``/``exec``, and ``trust_remote_code=True`` in any call or mapping.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bds_core", "bds_service", "api", "worker")


def _is_true(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def unsafe_loading(source: str, path: str) -> list[str]:
    """``path:line: what`` for every unsafe load in ``source``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename=path)):
        where = f"{path}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            func = node.func
            owner = (
                func.value.id
                if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                else None
            )
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if owner in {"pickle", "dill", "cloudpickle"} and name in {"load", "loads"}:
                found.append(f"{where}: {owner}.{name}")
            if owner == "joblib" and name == "load":
                found.append(f"{where}: joblib.load")
            if owner == "torch" and name == "load":
                weights_only = _keyword(node, "weights_only")
                if weights_only is None or not _is_true(weights_only):
                    found.append(f"{where}: torch.load without weights_only=True")
            if owner in {"np", "numpy"} and name == "load":
                allow = _keyword(node, "allow_pickle")
                if allow is not None and _is_true(allow):
                    found.append(f"{where}: numpy.load(allow_pickle=True)")
            if owner == "yaml" and name == "load":
                loader = _keyword(node, "Loader")
                if not (isinstance(loader, ast.Attribute) and "Safe" in loader.attr):
                    found.append(f"{where}: yaml.load without SafeLoader")
            if isinstance(func, ast.Name) and func.id in {"eval", "exec"}:
                found.append(f"{where}: {func.id}")
            remote = _keyword(node, "trust_remote_code")
            if remote is not None and not (
                isinstance(remote, ast.Constant) and remote.value is False
            ):
                found.append(f"{where}: trust_remote_code not literally False")
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == "trust_remote_code"
                    and not (isinstance(value, ast.Constant) and value.value is False)
                ):
                    found.append(f"{where}: trust_remote_code not literally False")
    return sorted(found, key=lambda problem: int(problem.split(":")[1]))


def test_no_package_unpickles_or_trusts_remote_code() -> None:
    found = [
        problem
        for package in PACKAGES
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        if "__pycache__" not in path.parts
        for problem in unsafe_loading(path.read_text(), path.relative_to(REPO_ROOT).as_posix())
    ]
    assert not found, "unsafe loading of possibly tenant-supplied data:\n" + "\n".join(found)


def test_the_lint_catches_each_unsafe_call() -> None:
    source = """
import pickle, torch, numpy as np, yaml
pickle.loads(blob)
torch.load(path)
torch.load(path, weights_only=False)
torch.load(path, weights_only=True)
np.load(path, allow_pickle=True)
yaml.load(text)
yaml.load(text, Loader=yaml.SafeLoader)
eval(code)
AutoModel.from_pretrained(name, trust_remote_code=True)
options = {"trust_remote_code": flag}
options = {"trust_remote_code": False}
"""
    found = [problem.split(": ", 1)[1] for problem in unsafe_loading(source, "example.py")]
    assert found == [
        "pickle.loads",
        "torch.load without weights_only=True",
        "torch.load without weights_only=True",
        "numpy.load(allow_pickle=True)",
        "yaml.load without SafeLoader",
        "eval",
        "trust_remote_code not literally False",
        "trust_remote_code not literally False",
    ]
