"""The documentation as a user meets it (issue 23), checked without building it (Sphinx is not a test dependency):
every public name of the package is on the API reference page with a numpydoc docstring, the package holds no
measured number and no path outside the repository, and the README stays a front page that leads to the site."""
import ast
import importlib
import io
import re
import tokenize

import pytest

from conftest import README_PATH, REPO

DOCS = REPO / "docs"
API_PAGE = DOCS / "api.md"
PACKAGE = REPO / "scatac"

# Modules whose public names (their __all__) make the API reference. The others are the scripts' and readers'
# plumbing, re-exported where users need it (scatac.io); a new module must be put in one list or the other.
PUBLIC_MODULES = (
    "scatac", "scatac.io", "scatac.io.fragments", "scatac.io.store", "scatac.pp", "scatac.tl", "scatac.pl",
    "scatac.export", "scatac.evaluate", "scatac.factorization", "scatac.simulate", "scatac.models.ae",
    "scatac.models.sparse_ae", "scatac.models.stacked_ae", "scatac.models.vae", "scatac.train", "scatac.callbacks",
    "scatac.nn", "scatac.batches", "scatac.streamed", "scatac.distributed", "scatac.params", "scatac.methods",
    "scatac.runtime", "scatac.measure", "scatac.errors",
)
INTERNAL_MODULES = ("scatac.cli", "scatac.files", "scatac.io.text", "scatac.io.matrices", "scatac.io.labels",
                    "scatac.models")


def module_names() -> set:
    return {".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            for path in PACKAGE.rglob("*.py")}


def public_objects() -> dict:
    """{"module.name": object} of every name in a public module's __all__ (modules themselves left out)."""
    import types

    found = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        assert hasattr(module, "__all__"), f"{module_name} states no public names (__all__)"
        for name in module.__all__:
            value = getattr(module, name)
            if not isinstance(value, types.ModuleType) and not name.startswith("__"):
                found[f"{module_name}.{name}"] = value
    return found


def documented_objects() -> dict:
    """{id(object): "dotted.name"} of every scatac.* name in the API page's autosummary blocks."""
    text = API_PAGE.read_text()
    blocks = re.findall(r"^\.\. autosummary::\n(.*?)```", text, re.S | re.M)
    assert blocks, "docs/api.md has no autosummary block"
    names = [line.strip().lstrip("~") for block in blocks for line in block.splitlines()
             if line.strip().startswith(("scatac", "~scatac"))]
    objects = {}
    for dotted in names:
        module_name, _, attribute = dotted.rpartition(".")
        module = importlib.import_module(module_name)
        assert hasattr(module, attribute), f"docs/api.md lists {dotted}, which does not exist"
        objects[id(getattr(module, attribute))] = dotted
    return objects


def test_every_module_is_public_or_internal():
    assert module_names() == set(PUBLIC_MODULES) | set(INTERNAL_MODULES), (
        "classify each scatac module in tests/test_docs.py: public (its __all__ on docs/api.md) or internal")


def test_every_public_name_is_in_the_api_reference():
    documented = documented_objects()
    missing = [name for name, value in public_objects().items() if id(value) not in documented]
    assert not missing, "not in docs/api.md's autosummary: " + ", ".join(missing)


def _returns_a_value(function: ast.FunctionDef) -> bool:
    """Whether the function itself (not a nested one) returns something other than None, or yields."""
    stack = list(function.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            return True
        stack.extend(ast.iter_child_nodes(node))
    return False


def _arguments(function: ast.FunctionDef) -> list:
    args = function.args
    names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return [name for name in names if name not in ("self", "cls")]


def definitions() -> dict:
    """{"module.name": (ast node, module's source)} of the functions and classes defined in the public modules."""
    found = {}
    for module_name in PUBLIC_MODULES:
        path = REPO / (module_name.replace(".", "/") + ".py")
        if not path.exists():
            path = REPO / module_name.replace(".", "/") / "__init__.py"
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                found[f"{module_name}.{node.name}"] = node
    return found


def test_public_functions_and_classes_have_numpydoc_sections():
    """Parameters where there are parameters, Returns (or Yields) where something is returned: numpydoc's sections,
    which the site renders (napoleon). Writes (the AnnData keys filled in) is checked where tl says it writes."""
    nodes = definitions()
    problems = []
    for name in public_objects():
        node = nodes.get(name)
        if node is None:  # re-exported: checked where it is defined
            continue
        doc = ast.get_docstring(node) or ""
        if not doc:
            problems.append(f"{name}: no docstring")
            continue
        if isinstance(node, ast.ClassDef):
            init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
            fields = [n for n in node.body if isinstance(n, ast.AnnAssign)]
            takes = (init is not None and _arguments(init)) or fields
            if takes and not re.search(r"^(Parameters|Attributes)\n-+$", doc, re.M):
                problems.append(f"{name}: no Parameters or Attributes section")
            continue
        if _arguments(node) and not re.search(r"^Parameters\n-+$", doc, re.M):
            problems.append(f"{name}: no Parameters section")
        if _returns_a_value(node) and not re.search(r"^(Returns|Yields)\n-+$", doc, re.M):
            problems.append(f"{name}: no Returns section")
    assert not problems, "\n".join(problems)


def test_tl_functions_say_what_they_write():
    nodes = definitions()
    silent = [name for name in importlib.import_module("scatac.tl").__all__
              if name not in ("score", "counts_of") and not re.search(r"^Writes\n-+$",
                                                                       ast.get_docstring(nodes[f"scatac.tl.{name}"]),
                                                                       re.M)]
    assert not silent, "scatac.tl functions without a Writes section: " + ", ".join(silent)


# What a measured result looks like in prose: a score, a time, a speed-up, a measured percentage, a data set that
# lives outside the repository. Such numbers go to docs/benchmarks.md (or docs/tried-and-dropped.md) with the
# command that made them; the code says why in words and points there.
MEASURED = {
    "an ARI figure": re.compile(r"\bARI\b[^\n{}]{0,30}?\b\d?\.\d\d?|\b\d?\.\d+(?:-\d?\.\d+)?\s+ARI\b"),
    "a time in seconds": re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?(?:s|ms|sec|seconds|minutes)\b"),
    "a speed-up": re.compile(r"\d[\d,]*(?:\.\d+)?\s?x\s+(?:faster|slower)|\b(?:faster|slower)\b[^\n]{0,20}\d"
                             r"|\bspeed-?up\b"),
    "a measured percentage": re.compile(r"[+-]\d+(?:\.\d+)?\s?%|\d+(?:\.\d+)?-\d+(?:\.\d+)?\s?%"),
    "a shared data set": re.compile(r"hemato600|schep600|hemato4k|cerebellum801"),
    "a path outside the repository": re.compile(r"\.\./shared|shared/data"),
}


def prose(path) -> list:
    """(line, text) of every comment and string literal of a source file (docstrings and --help texts among them)."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type in (tokenize.COMMENT, tokenize.STRING):
            found.append((token.start[0], token.string))
    return found


def measured_numbers(paths) -> list:
    hits = []
    for path in paths:
        for line, text in prose(path):
            for what, pattern in MEASURED.items():
                for match in pattern.finditer(text):
                    hits.append(f"{path.relative_to(REPO)}:{line + text[:match.start()].count(chr(10))}: {what}: "
                                f"{match.group(0)!r}")
    return hits


def test_no_measured_number_or_outside_path_in_the_package():
    hits = measured_numbers(sorted(PACKAGE.rglob("*.py")))
    assert not hits, "move these to docs/benchmarks.md with their command:\n" + "\n".join(hits)


@pytest.mark.parametrize("text, found", [
    ("# ARI 0.49 with the sigmoid", True), ("(3.0 s vs 3.9 s)", True), ("made an epoch 2,000x slower", True),
    ("peak RSS +6%", True), ("on hemato600", True), ("../shared/data", True),
    ("# the clusters' ARI against the labels", False), ("a fraction below 1 is of the cells", False),
])
def test_the_measured_number_check_can_fail(tmp_path, text, found):
    probe = tmp_path / "probe.py"
    probe.write_text(f'"""{text}"""\n')
    hits = []
    for line, literal in prose(probe):
        hits += [what for what, pattern in MEASURED.items() if pattern.search(literal)]
    assert bool(hits) == found, hits


def test_the_readme_is_a_front_page():
    text = README_PATH.read_text()
    assert len(text.splitlines()) < 200, "the README is a front page: under 200 lines, the rest on the site"
    for page in ("docs/getting-started.md", "docs/user-guide/inputs.md", "docs/user-guide/outputs.md",
                 "docs/user-guide/compare.md", "docs/user-guide/scale.md", "docs/api.md", "docs/benchmarks.md"):
        assert f"({page}" in text, f"the README does not link {page}"
        assert (REPO / page).exists()
    assert "python -m sphinx" in text, "the README says how to build the site"


def test_the_site_has_its_pages_and_they_link_to_each_other():
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*") if path.suffix in (".md", ".ipynb")
             and "_build" not in path.parts and "generated" not in path.parts}
    assert {"index.md", "getting-started.md", "tutorial.ipynb", "user-guide/index.md", "user-guide/inputs.md",
            "user-guide/outputs.md", "user-guide/methods.md", "user-guide/compare.md", "user-guide/notebook.md",
            "user-guide/scale.md", "api.md", "benchmarks.md", "tried-and-dropped.md"} <= pages
    for page in sorted(DOCS.rglob("*.md")):
        if "_build" in page.parts or "generated" in page.parts:
            continue
        for target in re.findall(r"\]\(([^)#\s]+\.(?:md|ipynb))(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).resolve().exists(), f"{page.relative_to(REPO)} links a missing {target}"
