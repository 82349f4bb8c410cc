"""Every third-party package the runtime code imports is one the project declares as a runtime dependency.

A plain ``pip install .`` brings only ``[project].dependencies``; a package that only the ``dev`` extra (or another
package, by chance) brings makes the first command of the README crash. The imports are read with ``ast``, those
inside functions included (the provider SDKs are imported when first used), and each is traced to the installed
distribution that holds its files.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_PACKAGES = ("service", "workers", "migrations")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    """The distributions ``[project].dependencies`` names (markers and versions dropped)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = set()
    for requirement in project["dependencies"]:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match, requirement
        names.add(_normalise(match.group(1)))
    return names


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted module) of every absolute import in the file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from google import genai` imports the module google.genai (google itself is a namespace no one owns);
            # for an attribute, `owner` falls back to the module that holds it
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


@cache
def module_owners() -> dict[str, str]:
    """Dotted module name -> the installed distribution whose files hold it."""
    owners: dict[str, str] = {}
    for dist in metadata.distributions():
        for file in dist.files or ():
            parts = file.parts
            if not parts or not parts[-1].endswith(".py") or ".." in parts:
                continue
            names = list(parts[:-1]) + ([] if parts[-1] == "__init__.py" else [parts[-1][:-3]])
            if names and all(n.isidentifier() for n in names):
                owners.setdefault(".".join(names), _normalise(dist.metadata["Name"]))
    return owners


def owner(module: str) -> str | None:
    """The distribution that provides ``module`` (its longest known prefix), or None for the standard library,
    the project itself and names that are attributes rather than modules."""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in RUNTIME_PACKAGES or top == "__future__":
        return None
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        found = module_owners().get(".".join(parts[:end]))
        if found is not None:
            return found
    return f"<no installed distribution has {module!r}>"


def undeclared() -> list[str]:
    allowed = declared() | {"defeater"}
    problems = []
    for package in RUNTIME_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, module in imports(path):
                dist = owner(module)
                if dist is not None and dist not in allowed:
                    problems.append(f"{path.relative_to(ROOT)}:{line}: {module} comes from {dist}")
    return problems


def test_every_runtime_import_is_a_declared_dependency() -> None:
    assert undeclared() == []


def test_the_check_sees_a_dev_only_import(tmp_path: Path) -> None:
    """The check is able to fail: pytest is installed here (the dev extra), but no runtime dependency."""
    assert owner("pytest") == "pytest"
    assert "pytest" not in declared()
    assert owner("google.genai.types") == "google-genai"
    assert owner("json.decoder") is None
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from google import genai\n    import yaml.nodes\n")
    assert [m for _, m in imports(source)] == ["google.genai", "yaml.nodes"]
    assert owner("starlette.exceptions.HTTPException") == "starlette"
