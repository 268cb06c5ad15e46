"""NMF and LSNMF (scatac.factorization): shapes, the sparse LSNMF against nimfa, nothing densified on the large
path, options checked by their declared rules; and the files they add to a results folder."""
import numpy as np
import pytest
import scipy.sparse as sp

import scatac
from scatac import export, factorization, files, methods
from scatac.evaluate import evaluate
from scatac.pp import transform
from scatac.simulate import simulate_atac


@pytest.fixture(scope="module")
def counts():
    """A 240 cells x 400 peaks simulated count matrix and its labels."""
    X, labels, barcodes, peaks = simulate_atac(n_cells=240, n_peaks=400, n_types=4, density=0.08, seed=3)
    return X, labels


@pytest.fixture(scope="module")
def small(counts):
    """The same matrix TF-IDF transformed; the tests pass it with transform='counts' (factorize as given)."""
    X, labels = counts
    return transform(X, "tfidf"), labels


def test_sparse_lsnmf_reproduces_nimfa_in_float64(small):
    X, _ = small
    X64 = X.astype(np.float64)
    W_n, H_n, info_n = factorization.fit_lsnmf(X64, 6, transform="counts", seed=1, max_iter=15, backend="nimfa",
                                                  graph_weight=0)
    W_s, H_s, info_s = factorization.fit_lsnmf(X64, 6, transform="counts", seed=1, max_iter=15, backend="sparse",
                                                  graph_weight=0)
    assert (info_n["backend"], info_s["backend"]) == ("nimfa", "sparse")
    assert info_n["n_iter"] == info_s["n_iter"] == 15
    # same start, same iterations: the factors agree to rounding, the objectives too
    np.testing.assert_allclose(W_s, W_n, rtol=1e-6, atol=1e-7 * np.abs(W_n).max())
    np.testing.assert_allclose(H_s, H_n, rtol=1e-6, atol=1e-7 * np.abs(H_n).max())
    assert info_s["reconstruction_err"] == pytest.approx(info_n["reconstruction_err"], rel=1e-9)
    assert info_s["projected_gradient_norm"] == pytest.approx(info_n["projected_gradient_norm"], rel=1e-6)
    # and the factorization did work: error well below that of the start
    W0, H0 = factorization.random_vcol_init(X64, 6, seed=1)
    assert info_s["reconstruction_err"] < 0.97 * factorization.factorization_error(X64, W0, H0)


def test_sparse_lsnmf_on_float32_input_stays_close_to_nimfa(small):
    X, _ = small
    assert X.dtype == np.float32
    _, _, info_n = factorization.fit_lsnmf(X, 5, transform="counts", seed=0, max_iter=12, backend="nimfa",
                                               graph_weight=0)
    W, H, info_s = factorization.fit_lsnmf(X, 5, transform="counts", seed=0, max_iter=12, backend="sparse",
                                               graph_weight=0)
    assert info_s["reconstruction_err"] == pytest.approx(info_n["reconstruction_err"], rel=1e-5)
    assert W.shape == (X.shape[0], 5) and H.shape == (5, X.shape[1])
    assert W.dtype == np.float32 and H.dtype == np.float32
    assert W.min() >= 0 and H.min() >= 0


def test_lsnmf_seed_is_reproducible_and_matters(small):
    X, _ = small
    W1, _, _ = factorization.fit_lsnmf(X, 4, transform="counts", seed=7, max_iter=5, backend="sparse")
    W2, _, _ = factorization.fit_lsnmf(X, 4, transform="counts", seed=7, max_iter=5, backend="sparse")
    W3, _, _ = factorization.fit_lsnmf(X, 4, transform="counts", seed=8, max_iter=5, backend="sparse")
    np.testing.assert_array_equal(W1, W2)
    assert not np.allclose(W1, W3)


def _forbid_full_densify(monkeypatch, shape):
    """Make toarray()/todense() of any sparse matrix of `shape` (either orientation) raise."""
    forbidden = {tuple(shape), tuple(shape[::-1])}
    for cls in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix):
        for name in ("toarray", "todense"):
            original = getattr(cls, name)

            def guard(self, *args, _original=original, **kwargs):
                if tuple(self.shape) in forbidden:
                    raise AssertionError(f"the whole {self.shape} matrix was densified")
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(cls, name, guard)


def test_large_path_never_densifies_the_matrix(counts, monkeypatch):
    X, labels = counts
    _forbid_full_densify(monkeypatch, X.shape)
    # 'auto' with a tiny dense limit takes the sparse solver, as it would for 100k x 100k;
    # the default TF-IDF transform stays sparse too
    W, H, info = factorization.fit_lsnmf(X, 4, seed=0, max_iter=10, dense_limit_bytes=1000)
    assert info["backend"] == "sparse" and W.shape == (X.shape[0], 4) and H.shape == (4, X.shape[1])
    # the guard does catch a densification (nimfa's route copies X to dense)
    with pytest.raises(AssertionError, match="densified"):
        factorization.fit_lsnmf(X, 4, seed=0, max_iter=2, backend="nimfa", graph_weight=0)
    # sklearn's NMF and MiniBatchNMF work on the sparse matrix too
    W, H, info = factorization.fit_nmf(X, 4, seed=0, max_iter=50, minibatch_above=100)
    assert info["backend"] == "minibatch" and W.shape == (X.shape[0], 4) and H.shape == (4, X.shape[1])
    W, H, info = factorization.fit_nmf(X, 4, seed=0, max_iter=50, backend="full")
    assert info["backend"] == "full" and np.isfinite(info["reconstruction_err"])


def test_nmf_features_separate_the_simulated_types(small):
    X, labels = small
    W, H, info = factorization.fit_nmf(X, 6, transform="counts", seed=0)
    assert W.shape == (X.shape[0], 6) and H.shape == (6, X.shape[1])
    assert (info["init"], info["solver"], info["backend"]) == ("nndsvda", "mu", "full")
    _, scores, _ = evaluate(W, labels, None, 0)
    assert scores["ARI"] > 0.6, scores
    # the error reported is ||X - WH||_F, computed without densifying X
    assert info["reconstruction_err"] == pytest.approx(np.linalg.norm(X.toarray() - W.astype(np.float64) @ H), rel=1e-4)


def test_factorization_error_matches_dense(small):
    X, _ = small
    rng = np.random.default_rng(0)
    W, H = rng.random((X.shape[0], 3)), rng.random((3, X.shape[1]))
    assert factorization.factorization_error(X, W, H) == pytest.approx(np.linalg.norm(X.toarray() - W @ H), rel=1e-9)


def test_random_vcol_init_is_means_of_random_columns_and_rows():
    X = sp.csr_matrix(np.arange(1, 31, dtype=np.float64).reshape(5, 6))
    W, H = factorization.random_vcol_init(X, 2, seed=0, p_c=2, p_r=3)
    rng = np.random.RandomState(0)
    dense = X.toarray()
    for k in range(2):
        cols = rng.randint(0, 6, size=2)
        rows = rng.randint(0, 5, size=3)
        np.testing.assert_allclose(W[:, k], dense[:, cols].mean(axis=1))
        np.testing.assert_allclose(H[k], dense[rows].mean(axis=0))


@pytest.mark.parametrize("rank, match", [(0, "rank: must be an integer >= 1, got 0"),
                                         (400, "smaller than the number of peaks"),
                                         (2.5, "rank: must be an integer >= 1, got 2.5"), (241, "number of cells")])
def test_bad_rank_is_an_input_error(small, rank, match):
    X, _ = small
    for fit in (factorization.fit_nmf, factorization.fit_lsnmf):
        with pytest.raises(scatac.InputError, match=match):
            fit(X, rank, transform="counts")


@pytest.mark.parametrize("fit, option, value, message", [
    (factorization.fit_nmf, "solver", "lbfgs", "solver: must be one of 'mu', 'cd', got 'lbfgs'"),
    (factorization.fit_nmf, "max_iter", 0, "max_iter: must be an integer >= 1, got 0"),
    (factorization.fit_lsnmf, "beta", 1.5, "beta: must be a number in (0, 1), got 1.5"),
    (factorization.fit_lsnmf, "backend", "dense", "backend: must be one of 'auto', 'nimfa', 'sparse', got 'dense'"),
    (factorization.fit_lsnmf, "maxiter", 3, "lsnmf: unknown option 'maxiter'"),
])
def test_bad_options_are_input_errors_naming_the_rule(small, fit, option, value, message):
    X, _ = small
    with pytest.raises(scatac.InputError) as raised:
        fit(X, 3, transform="counts", **{option: value})
    assert message in str(raised.value)


def test_methods_are_parsed_and_unknown_ones_named():
    allowed = [m.name for m in methods.FACTORIZATIONS]
    assert methods.parse_names("nmf, LSNMF", allowed) == ["NMF", "LSNMF"]
    assert methods.parse_names(["LSNMF", "lsnmf"], allowed) == ["LSNMF"]
    with pytest.raises(scatac.InputError, match="unknown method 'PCA'"):
        methods.parse_names("NMF,PCA", allowed)


def test_import_nimfa_aliases_np_mat_only():
    nimfa = factorization.import_nimfa()
    assert np.mat is np.asmatrix
    assert hasattr(nimfa, "Lsnmf")


def test_loadings_table_is_peaks_by_rank(tmp_path):
    loadings = np.array([[0.5, 0.0, 2.0], [1.0, 3.0, 0.25]]).T  # peaks x rank
    export.write_loadings(tmp_path / "loadings.tsv", loadings, ["p1", "p2", "p3"], "NMF")
    lines = (tmp_path / "loadings.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["peak", "NMF_1", "NMF_2"]
    assert [line.split("\t") for line in lines[1:]] == [["p1", "0.5", "1"], ["p2", "0", "3"], ["p3", "2", "0.25"]]


def test_staged_folder_is_all_or_nothing(tmp_path):
    final = tmp_path / "NMF"
    with pytest.raises(RuntimeError):
        with files.staged_folder(final) as stage:
            (stage / "feature.txt").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with files.staged_folder(final) as stage:
        (stage / "a.txt").write_text("old")
    with files.staged_folder(final) as stage:
        (stage / "b.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["NMF"]


def test_default_input_is_idf_of_the_counts(counts):
    X_counts, _ = counts
    W_default, H_default, info = factorization.fit_nmf(X_counts, 4, seed=0, max_iter=30)
    W_given, H_given, _ = factorization.fit_nmf(transform(X_counts, "idf"), 4, seed=0, max_iter=30, transform="counts")
    assert info["transform"] == "idf"
    np.testing.assert_allclose(W_default, W_given, rtol=1e-5, atol=1e-6)
    with pytest.raises(scatac.InputError, match="transform: must be one of 'counts', 'binary', 'tfidf', 'idf', 'log', 'maxabs', got 'sqrt'"):
        factorization.fit_lsnmf(X_counts, 4, transform="sqrt")


def test_lsi_on_idf_input_is_the_svd_of_pp_idf(counts):
    """LSI_idf, the reference on the factorizations' own input: pp.idf, SVD, the first component dropped."""
    from sklearn.decomposition import TruncatedSVD

    X_counts, labels = counts
    features = factorization.lsi(X_counts, 4, seed=0, transform="idf")
    scores = TruncatedSVD(5, algorithm="randomized", n_iter=7, random_state=0).fit_transform(transform(X_counts, "idf"))[:, 1:]
    np.testing.assert_allclose(np.abs(features), np.abs(scores / scores.std(axis=0)), rtol=1e-4, atol=1e-5)
    weighted = factorization.lsi(X_counts, 4, seed=0, transform="idf", unit_variance=False)  # U S, as compare.py's LSI_idf
    np.testing.assert_allclose(np.abs(weighted), np.abs(scores), rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.abs(features), np.abs(factorization.lsi(X_counts, 4, seed=0)))  # not tfidf's
    _, scores, _ = evaluate(features, labels, None, 0)
    assert scores["ARI"] > 0.5  # the simulated types separate
    with pytest.raises(ValueError, match="transform: must be one of 'tfidf', 'idf', got 'binary'"):
        factorization.lsi(X_counts, 4, transform="binary")


def gnmf_objective(V, W, H, neighbors, lam):
    adjacency, degree = factorization.neighbor_graph_parts(neighbors)
    laplacian_term = (degree[:, None] * W * W).sum() - (W * (adjacency @ W)).sum()  # tr(W^T (D - A) W)
    return factorization._squared_error(sp.csr_matrix(V, dtype=np.float64), W, H) + lam * laplacian_term


def test_graph_regularized_updates_lower_their_objective_and_pull_neighbours_together(counts):
    """Cai et al.'s updates never raise ||V - WH||^2 + lambda tr(W^T L W) at a fixed lambda; fit_nmf's default
    refinement leaves the neighbours' factors nearer than the plain fit's, which graph_weight 0 gives unchanged."""
    X, _ = counts
    V = transform(X, "idf").astype(np.float64)
    W0, H0, _ = factorization.fit_nmf(X, 4, seed=0, graph_weight=0)
    W0, H0 = W0.astype(np.float64), H0.astype(np.float64)
    neighbors = scatac.pp.reference_neighbors(X, n_components=4)
    W, H, lam = factorization.graph_regularized_updates(V, W0, H0, neighbors, 30.0, 1)
    assert lam > 0
    adjacency, degree = factorization.neighbor_graph_parts(neighbors)
    tiny = np.finfo(np.float64).eps
    before = gnmf_objective(V, W, H, neighbors, lam)
    for _ in range(10):  # the update rule at the fixed lambda, W's repeated on one product (graph_w_updates)
        VHt = V @ H.T
        for _ in range(2):
            W *= (VHt + lam * (adjacency @ W)) / np.maximum(W @ (H @ H.T) + lam * degree[:, None] * W, tiny)
            now = gnmf_objective(V, W, H, neighbors, lam)
            assert now <= before * (1 + 1e-9)
            before = now
        H *= (V.T @ W).T / np.maximum((W.T @ W) @ H, tiny)
        now = gnmf_objective(V, W, H, neighbors, lam)
        assert now <= before * (1 + 1e-9)
        before = now
    # the function's own steps: one W update a step, and two, both below the start at the lambda they set
    for w_updates in (1, 2):
        W, H, lam = factorization.graph_regularized_updates(V, W0, H0, neighbors, 30.0, 5, w_updates)
        assert gnmf_objective(V, W, H, neighbors, lam) < gnmf_objective(V, W0, H0, neighbors, lam)

    def neighbour_spread(W):
        W = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
        return float(((W[:, None, :] - W[neighbors]) ** 2).sum(-1).mean())

    W_graph, _, info = factorization.fit_nmf(X, 4, seed=0)
    assert info["graph_weight"] == 30 and info["graph_iter"] == 50 and info["graph_w_updates"] == 2
    assert info["graph_lambda"] > 0
    assert neighbour_spread(W_graph.astype(np.float64)) < 0.8 * neighbour_spread(W0)
    W_plain, _, plain = factorization.fit_nmf(X, 4, seed=0, graph_weight=0)
    assert plain["graph_lambda"] == 0 and np.array_equal(W_plain, W0.astype(np.float32))
    with pytest.raises(scatac.InputError, match="graph_weight"):
        factorization.fit_nmf(X, 4, graph_weight=-1)
    with pytest.raises(scatac.InputError, match="graph_w_updates"):
        factorization.fit_nmf(X, 4, graph_w_updates=0)


def test_lsnmf_graph_term_lowers_its_objective_and_pull_neighbours_together(counts):
    """LSNMF's W half-steps solve the graph-regularized least squares: at the lambda it used, the fit ends below its
    start on ||V - WH||^2 + lambda tr(W^T L W), and the neighbours' factors end nearer than without the term. Only the
    sparse solver has the term: 'auto' takes it, nimfa is refused with it."""
    X, _ = counts
    V = transform(X, "idf").astype(np.float64)
    neighbors = scatac.pp.reference_neighbors(X, n_components=4)
    W_graph, H_graph, info = factorization.fit_lsnmf(X, 4, seed=0, max_iter=20)
    assert info["backend"] == "sparse" and info["graph_weight"] == 3 and info["graph_lambda"] > 0
    W0, H0 = factorization.random_vcol_init(V, 4, seed=0)
    lam = info["graph_lambda"]
    assert (gnmf_objective(V, W_graph.astype(np.float64), H_graph.astype(np.float64), neighbors, lam)
            < 0.9 * gnmf_objective(V, W0, H0, neighbors, lam))
    W_plain, _, plain = factorization.fit_lsnmf(X, 4, seed=0, max_iter=20, graph_weight=0)
    assert plain["backend"] == "nimfa" and plain["graph_lambda"] == 0

    def neighbour_spread(W):
        W = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
        return float(((W[:, None, :] - W[neighbors]) ** 2).sum(-1).mean())

    assert neighbour_spread(W_graph.astype(np.float64)) < 0.8 * neighbour_spread(W_plain.astype(np.float64))
    with pytest.raises(scatac.InputError, match="backend: nimfa has no graph term"):
        factorization.fit_lsnmf(X, 4, backend="nimfa")
