"""The scatac package as a notebook uses it: the README's example runs on real data and writes nothing, every
result lands under its stated key and survives write_h5ad, options are checked by their declared rules, and the
package stays layered (no import cycles, no script imported, no heavy import on the --help and input-error paths)."""
import ast
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import scatac
from conftest import README_PATH, REPO, SHARED_DATA, cpu_trainer, shared_path


def readme_example() -> str:
    """The first ```python block after the README's "## Python API" heading."""
    text = README_PATH.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_on_hemato600_and_writes_nothing(tmp_path, monkeypatch):
    shared_path("hemato600")
    code = readme_example().replace("../shared/data", str(SHARED_DATA))
    assert len(code.strip().splitlines()) <= 12, "the README promises a short example"
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    adata = namespace["adata"]
    assert adata.obsm["X_AE"].shape == (600, 10) and np.isfinite(adata.obsm["X_AE"]).all()
    assert adata.obsm["X_umap"].shape == (600, 2)
    scores = adata.uns["cluster"]["scores"]
    assert scores["ARI"] > 0.3 and scores["n_clusters"] == 6  # LSI reaches ~0.5 here, chance ~0
    assert adata.obs["cluster"].nunique() == 6
    assert list(tmp_path.iterdir()) == [], "the API wrote files"
    assert not (REPO / "outputs").exists() or "AE" not in os.listdir(REPO / "outputs")


def test_every_method_writes_its_keys_and_the_result_saves(demo_adata, tmp_path):
    import anndata

    adata = demo_adata.copy()
    model = scatac.tl.ae(adata, 4, epochs=2, hidden_dims=(32,), trainer=cpu_trainer())
    assert model.config["latent_dim"] == 4 and adata.uns["AE"]["params"]["hidden_dims"] == [32]
    assert list(adata.uns["AE"]["loss"]["epoch"]) == [1, 2]
    assert scatac.tl.nmf(adata, 4) is None and scatac.tl.lsnmf(adata, 4, max_iter=5) is None
    scatac.tl.lsi(adata, 4)
    scatac.tl.lsi(adata, 4, transform="idf", key_added="LSI_idf")
    assert adata.uns["NMF"]["params"]["transform"] == "idf" and adata.uns["LSI_idf"]["params"]["transform"] == "idf"
    with pytest.raises(scatac.InputError, match="transform: must be one of 'tfidf', 'idf', got 'log'"):
        scatac.tl.lsi(adata, 4, transform="log")
    for key in ("AE", "NMF", "LSNMF", "LSI"):
        assert adata.obsm[f"X_{key}"].shape == (adata.n_obs, 4) and adata.uns[key]["method"] == key
    assert adata.varm["NMF_loadings"].shape == (adata.n_vars, 4) and adata.varm["LSNMF_loadings"].min() >= 0
    scores = scatac.tl.cluster(adata, use_rep="X_NMF", labels_key="label", key_added="NMF_cluster")
    assert scores["ARI"] > 0.5 and adata.uns["NMF_cluster"]["confusion"].to_numpy().sum() == adata.n_obs
    scatac.tl.umap(adata, use_rep="X_NMF", key_added="umap_nmf")
    assert adata.obsm["X_umap_nmf"].shape == (adata.n_obs, 2)
    adata.write_h5ad(tmp_path / "all.h5ad")  # what a notebook user does next: every uns entry must be storable
    back = anndata.read_h5ad(tmp_path / "all.h5ad")
    np.testing.assert_array_equal(back.obsm["X_AE"], adata.obsm["X_AE"])
    assert back.uns["NMF_cluster"]["scores"]["ARI"] == pytest.approx(scores["ARI"])


def test_layer_is_read_instead_of_x(demo_adata):
    adata = demo_adata.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X * 0  # what the method must not read
    scatac.tl.nmf(adata, 4, layer="counts")
    assert np.abs(adata.obsm["X_NMF"]).sum() > 0
    with pytest.raises(scatac.InputError, match="no layer 'raw'"):
        scatac.tl.nmf(adata, 4, layer="raw")


@pytest.mark.parametrize("call, message", [
    (lambda a: scatac.tl.ae(a, 4, hiden_dims=(8,)), "AE: unknown option 'hiden_dims'; allowed: epochs, hidden_dims"),
    (lambda a: scatac.tl.ae(a, 4, input_dropout=1.0), "input_dropout: must be a number in [0, 1), got 1.0"),
    (lambda a: scatac.tl.vae(a, 4, prior="laplace"), "prior: must be one of 'gmm', 'normal', got 'laplace'"),
    (lambda a: scatac.tl.stacked_ae(a, 0), "latent_dim: must be an integer >= 1, got 0"),
    (lambda a: scatac.tl.sparse_ae(a, 5000), "latent_dim 5000 must be smaller than the number of peaks kept (2366)"),
    (lambda a: scatac.tl.cluster(a, use_rep="X_nothing"), "adata has no obsm['X_nothing']"),
])
def test_bad_arguments_are_input_errors_before_any_training(demo_adata, call, message):
    adata = demo_adata.copy()
    with pytest.raises(scatac.InputError) as raised:
        call(adata)
    assert message in str(raised.value)
    assert not [k for k in adata.obsm if k != "X_umap"]


HEAVY = ("torch", "anndata", "matplotlib", "umap", "igraph")
PROBE = """
import runpy, sys
sys.argv = {argv!r}
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as exc:
    print("exit", exc.code)
print(sorted(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("argv", [["AE.py", "--help"], ["VAE.py", "5", "no_such_folder", "out", "10"],
                                  ["SparseAE.py", "5", "data/demo", "out", "10", "--input-dropout", "2"],
                                  ["compare.py", "data/demo", "out", "10", "--methods", "PCA"]])
def test_help_and_input_errors_import_nothing_heavy(argv):
    code = PROBE.format(argv=argv, script=str(REPO / argv[0]), heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", (done.stdout, done.stderr)
    assert "exit 0" in done.stdout if "--help" in argv else "exit 2" in done.stdout


def package_imports() -> dict:
    """{module: the scatac modules and top-level names it imports}, read from the source."""
    graph = {}
    for path in sorted((REPO / "scatac").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, node.module] if node.module else base)
                names = [f"{target}.{a.name}" for a in node.names] if not node.module else [target]
                imported.update(names)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
        graph[module] = imported
    return graph


def test_the_package_is_layered():
    graph = package_imports()
    modules = set(graph)
    scripts = {p.stem for p in REPO.glob("*.py")}
    for module, imported in graph.items():
        assert not imported & scripts, f"{module} imports a script: {imported & scripts}"
    # no import cycle among the package's modules (scatac/__init__.py only hands names on)
    edges = {m: set() if m == "scatac" else {i for i in imported if i in modules and i != m} for m, imported in graph.items()}
    done, visiting = set(), []

    def visit(module):
        assert module not in visiting, f"import cycle: {' -> '.join(visiting[visiting.index(module):] + [module])}"
        if module in done:
            return
        visiting.append(module)
        for target in edges[module]:
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(modules):
        visit(module)


def test_heavy_libraries_are_imported_where_they_are_used():
    """Only the network modules import torch at the top; nothing imports anndata, matplotlib or umap there."""
    for path in sorted((REPO / "scatac").rglob("*.py")):
        tree = ast.parse(path.read_text())
        top = {a.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for a in node.names}
        top |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        allowed = {"torch"} if path.name == "nn.py" or path.parent.name == "models" else set()
        assert not (top & set(HEAVY)) - allowed, f"{path.relative_to(REPO)} imports {top & set(HEAVY)} at module level"
