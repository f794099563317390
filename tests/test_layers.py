"""The structure stays as designed (docs/architecture.md): small modules, no reaching into another
module's private names, and the import layers that ``lint-imports`` checks.

Each check is a function over a folder, so the tests at the bottom show on scratch files that it
catches what it should (a check that cannot fail checks nothing).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "llmlab"
FRONT_ENDS = (ROOT / "app", ROOT / "notebooks")
MAX_LINES = 600

# `python -m importlinter.cli` runs nothing and exits 0, so call what the `lint-imports` script calls.
LINT_IMPORTS = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command;"
                " sys.exit(lint_imports_command())"]


# ----- the checks -----
def long_modules(package: Path, limit: int = MAX_LINES) -> list[str]:
    """Every module under ``package`` over ``limit`` lines, with its count."""
    found = []
    for path in sorted(package.rglob("*.py")):
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > limit:
            found.append(f"{path.relative_to(package.parent)}: {n} lines")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_names(package: Path) -> dict[Path, str]:
    """Each file of ``package`` -> its dotted module name (a package's ``__init__.py`` -> the package)."""
    names = {}
    for path in package.rglob("*.py"):
        parts = [package.name, *path.relative_to(package).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[path] = ".".join(parts)
    return names


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """``a.b.c`` as the dotted name it stands for, when ``a`` is bound to a module of the package."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


def private_access(package: Path, others: tuple[Path, ...] = ()) -> list[str]:
    """Every place in ``package`` and the ``others`` folders that uses a private name of another module
    of ``package``: ``from pkg.x import _y``, ``import pkg._x``, and ``x._y`` on an imported module
    (a name bound by an import anywhere in the file, as far as the AST can tell). ``file:line: what``."""
    top = package.name
    root = package.parent.parent  # src/<package>: file names are shown from the project root
    names = _module_names(package)
    modules = set(names.values())
    files = [(path, names[path]) for path in sorted(names)]
    files += [(path, None) for folder in others if folder.is_dir() for path in sorted(folder.rglob("*.py"))]
    found = []
    for path, current in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(root) if path.is_relative_to(root) else path
        is_package = current is not None and path.name == "__init__.py"
        package_of = current if is_package else (current or "").rpartition(".")[0]
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] != top:
                        continue
                    if any(_private(p) for p in alias.name.split(".")):
                        found.append(f"{where}:{node.lineno}: import {alias.name}")
                    if alias.asname:
                        aliases[alias.asname] = alias.name
                    else:
                        aliases[top] = top
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    base = package_of.split(".")[: len(package_of.split(".")) - (node.level - 1)]
                    module = ".".join([*base, *([module] if module else [])])
                if module.split(".")[0] != top:
                    continue
                if any(_private(p) for p in module.split(".")):
                    found.append(f"{where}:{node.lineno}: from {module} import ...")
                for alias in node.names:
                    if _private(alias.name) and module != current:
                        found.append(f"{where}:{node.lineno}: from {module} import {alias.name}")
                    if f"{module}.{alias.name}" in modules:
                        aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                base = _dotted(node.value, aliases)
                if base in modules and base != current:
                    found.append(f"{where}:{node.lineno}: {base}.{node.attr}")
    return sorted(set(found), key=lambda s: (s.split(":")[0], int(s.split(":")[1])))


def lint_imports(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """import-linter on the contracts of the project in ``cwd`` (its pyproject.toml or .importlinter)."""
    return subprocess.run([*LINT_IMPORTS, "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


# ----- the project -----
def test_no_module_is_over_600_lines():
    too_long = long_modules(PACKAGE)
    assert not too_long, f"modules over {MAX_LINES} lines (split them):\n" + "\n".join(too_long)


def test_no_private_names_across_modules():
    found = private_access(PACKAGE, FRONT_ENDS)
    assert not found, "private names used outside their module (make them public or move the code):\n" + \
        "\n".join(found)


def test_import_layers_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, f"lint-imports failed:\n{result.stdout}\n{result.stderr}"
    assert "broken" in result.stdout and "0 broken" in result.stdout, result.stdout


def unlayered(package: Path, layers: list[str]) -> list[str]:
    """Top-level modules and packages of ``package`` that no layer of the contract names."""
    named = {name.strip() for layer in layers for name in layer.replace("|", ":").split(":")}
    found = {p.stem for p in package.glob("*.py") if p.stem not in ("__init__", "__main__")}
    found |= {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    return sorted(f"{package.name}.{m}" for m in found if f"{package.name}.{m}" not in named)


def test_every_module_has_a_layer():
    import tomllib

    (contract,) = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    missing = unlayered(PACKAGE, contract["layers"])
    assert not missing, "modules the layer contract does not place (add them to pyproject.toml's layers): " + \
        ", ".join(missing)
    without = [layer.replace("| llmlab.catalog", "") for layer in contract["layers"]]
    assert unlayered(PACKAGE, without) == ["llmlab.catalog"]  # the check sees a module left out


# ----- each check can fail -----
def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_long_modules_names_each_offender_with_its_count(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/ok.py": "x = 1\n" * 600, "pkg/sub/big.py": "x = 1\n" * 601,
                      "pkg/huge.py": "x = 1\n" * 900})
    assert long_modules(tmp_path / "pkg") == ["pkg/huge.py: 900 lines", "pkg/sub/big.py: 601 lines"]


def test_private_access_finds_each_form(tmp_path):
    _write(tmp_path, {
        "src/pkg/__init__.py": "",
        "src/pkg/a.py": """\
            import pkg

            def _hidden(): ...
            def shown(): ...
            _CACHE = {}
            """,
        "src/pkg/sub/__init__.py": "",
        "src/pkg/sub/_impl.py": "x = 1\n",
        "src/pkg/sub/b.py": """\
            from pkg.a import _hidden
            from pkg.a import shown, _CACHE as cache
            from pkg.sub._impl import x
            from . import _impl
            from ..a import _hidden as h2
            import pkg.sub._impl
            import pkg.a as a
            from pkg import a as a2
            import pkg
            from pkg.sub import b

            def f():
                a._hidden()
                a2._CACHE.clear()
                pkg.a._hidden()
                b._own
                a.shown(); a.__name__; cache._private_of_a_dict
            """,
        "app/page.py": """\
            import pkg.a

            def show():
                from pkg.sub.b import _x
                return pkg.a._CACHE
            """,
    })
    assert private_access(tmp_path / "src" / "pkg", (tmp_path / "app",)) == [
        "app/page.py:4: from pkg.sub.b import _x",
        "app/page.py:5: pkg.a._CACHE",
        "src/pkg/sub/b.py:1: from pkg.a import _hidden",
        "src/pkg/sub/b.py:2: from pkg.a import _CACHE",
        "src/pkg/sub/b.py:3: from pkg.sub._impl import ...",
        "src/pkg/sub/b.py:4: from pkg.sub import _impl",
        "src/pkg/sub/b.py:5: from pkg.a import _hidden",
        "src/pkg/sub/b.py:6: import pkg.sub._impl",
        "src/pkg/sub/b.py:13: pkg.a._hidden",
        "src/pkg/sub/b.py:14: pkg.a._CACHE",
        "src/pkg/sub/b.py:15: pkg.a._hidden",
    ]


def test_lint_imports_fails_on_a_broken_layer(tmp_path):
    _write(tmp_path, {
        "layerprobe/__init__.py": "",
        "layerprobe/high.py": "X = 1\n",
        "layerprobe/low.py": "from layerprobe.high import X\n",  # the lower layer imports the higher
        ".importlinter": """\
            [importlinter]
            root_package = layerprobe

            [importlinter:contract:layers]
            name = high above low
            type = layers
            layers =
                layerprobe.high
                layerprobe.low
            """,
    })
    result = lint_imports(tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0, result.stdout + result.stderr
    assert "layerprobe.low -> layerprobe.high" in result.stdout, result.stdout
    (tmp_path / "layerprobe" / "low.py").write_text("Y = 2\n")
    result = lint_imports(tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
