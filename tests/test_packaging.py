"""pyproject.toml declares every library the package imports: `pip install .` alone gives a working scatac."""
import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from conftest import REPO

# imported only by functions that say so and raise ImportError with an install hint without them
OPTIONAL = {"snapatac2"}


def imported_libraries() -> dict:
    """Top-level names the package imports (import statements and importlib.import_module("...") literals),
    stdlib and scatac itself left out, each with a file that imports it."""
    found = {}
    for path in sorted((REPO / "scatac").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                names = [node.args[0].value]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "scatac":
                    found.setdefault(top, path.relative_to(REPO))
    return found


def declared(requirements) -> set:
    return {re.split(r"[<>=!~\[; ]", item, maxsplit=1)[0].lower().replace("_", "-") for item in requirements}


def test_every_imported_library_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = declared(project["dependencies"])
    optional = declared(item for group in project.get("optional-dependencies", {}).values() for item in group)
    distributions = packages_distributions()
    imported = imported_libraries()
    assert {"torch", "igraph", "hdf5plugin", "sklearn"} <= set(imported), "the import scan misses known imports"
    missing = []
    for name, where in imported.items():
        dists = {d.lower().replace("_", "-") for d in distributions.get(name, [name])}
        pool = optional if name in OPTIONAL else required
        if not dists & pool:
            missing.append(f"{name} (imported in {where}) as {' or '.join(sorted(dists))}")
    assert not missing, "pyproject.toml does not declare: " + "; ".join(missing)
