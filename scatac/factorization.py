"""Matrix factorizations of the cells x peaks matrix V ~ W H, and LSI.

W (n_cells, rank), the cell factors, are the features; H (rank, n_peaks), the peak loadings, say
which peaks each factor opens. NMF is scikit-learn's on the sparse matrix; LSNMF is nimfa's Lsnmf
(Lin 2007) on a dense copy while that is under 1 GiB, else this module's sparse solver of the same
algorithm. LSI (TF-IDF, truncated SVD) is the reference every comparison includes.
"""
from __future__ import annotations

import math
import sys
import time
import warnings

import numpy as np
import scipy.sparse as sp

from .errors import fail
from .params import FACTORIZATION_TRANSFORM, LATENT_DIM, Options, Param, check_latent_size
from .pp import idf, tfidf, transform

# nimfa works on a dense float64 copy of V; above this size LSNMF uses the sparse solver below.
LSNMF_DENSE_LIMIT_BYTES = 1 << 30
# sklearn's NMF never densifies a sparse X (its memory is X plus the factors), so full batch
# "fits" wherever X does; on 30k simulated cells it was as good as MiniBatchNMF (ARI 0.997 both)
# and faster (3.0 s vs 3.9 s). MiniBatchNMF takes over only where one full pass per update gets
# long; this threshold is a guard, not a measured crossover.
MINIBATCH_NMF_ABOVE = 200000

# The options of each factorization. The defaults were chosen by measurement on ../shared/data:
# idf input beat tfidf for both methods on all three sets (3 seeds; NMF on hemato4k ARI 0.285 -> 0.445),
# as tfidf had beaten counts and binary; NMF converges within 60-100 iterations
# there (tol 1e-4), so 400 only guards larger data; LSNMF's original 12 iterations stop short,
# 30 gain 0.05-0.06 ARI and 50 leave room (its own stopping rule rarely fires).
NMF_OPTIONS = Options(
    FACTORIZATION_TRANSFORM,
    Param("max_iter", int, 400, "most multiplicative-update iterations", low=1),
    Param("init", str, "nndsvda", "scikit-learn NMF start", choices=("nndsvda", "nndsvd", "nndsvdar", "random")),
    Param("solver", str, "mu", "mu: multiplicative updates; cd: coordinate descent", choices=("mu", "cd")),
    Param("tol", float, 1e-4, "stopping tolerance", low=0, low_open=True),
    Param("backend", str, "auto", f"full NMF, or MiniBatchNMF (auto: above {MINIBATCH_NMF_ABOVE} cells)",
          choices=("auto", "full", "minibatch")),
)
LSNMF_OPTIONS = Options(
    FACTORIZATION_TRANSFORM,
    Param("max_iter", int, 50, "most outer iterations (each solves W then H)", low=1),
    Param("sub_iter", int, 10, "projected-gradient iterations per half-step", low=1),
    Param("inner_sub_iter", int, 10, "step-size search iterations", low=1),
    Param("beta", float, 0.1, "step-size shrink factor", low=0, high=1, low_open=True, high_open=True),
    Param("min_residuals", float, 1e-5, "stop when the projected gradient falls below this fraction of its start",
          low=0, low_open=True),
    Param("backend", str, "auto", "nimfa on a dense copy, or the sparse solver (auto: nimfa while the copy is < 1 GiB)",
          choices=("auto", "nimfa", "sparse")),
)


def check_rank(rank, n_cells: int, n_peaks: int, source="rank") -> int:
    """`rank` as an int: a whole number >= 1, below the peaks kept and at most the cells kept."""
    rank = LATENT_DIM.check(rank, "rank")
    check_latent_size(rank, n_cells, n_peaks, name="rank", source=source)
    return rank


def factorization_input(X: sp.csr_matrix, kind: str) -> sp.csr_matrix:
    """Non-negative input of a factorization: 'counts' (X as it is, float) or one of `transform`'s kinds."""
    kind = FACTORIZATION_TRANSFORM.check(kind)
    if kind == "counts":
        X = sp.csr_matrix(X)
        return X if np.issubdtype(X.dtype, np.floating) else X.astype(np.float32)
    return transform(X, kind)


def import_nimfa():
    """Import nimfa 1.4.0 under NumPy 2, the one compatibility step this suite takes.

    nimfa 1.4.0 (its last release) calls `np.mat` in its dense code paths; NumPy 2.0
    removed that alias of `np.asmatrix` (same function, NumPy 1.x defined `mat = asmatrix`).
    We restore the alias only if it is missing, and touch nothing else. A NumPy < 2 pin
    is not an option: this stack (numpy 2.4, scipy 1.17, scikit-learn 1.9, torch) needs NumPy 2.
    """
    if not hasattr(np, "mat"):
        np.mat = np.asmatrix
    import nimfa

    return nimfa


def factorization_error(X: sp.csr_matrix, W: np.ndarray, H: np.ndarray) -> float:
    """Frobenius norm ||X - W H|| computed from X's non-zeros and the small factors, never densifying X."""
    Xd = X.astype(np.float64) if X.dtype != np.float64 else X
    squared = float(Xd.data @ Xd.data)
    squared -= 2.0 * float(np.sum(np.asarray(Xd @ H.T) * W))
    squared += float(np.sum((W.T @ W) * (H @ H.T)))
    return math.sqrt(max(squared, 0.0))


def random_vcol_init(X: sp.csr_matrix, rank: int, seed: int = 0, p_c: int | None = None, p_r: int | None = None):
    """nimfa's 'random_vcol' seeding, seeded: column k of W is the mean of p_c random columns
    of X (default ceil(n_peaks / 5)), row k of H the mean of p_r random rows (ceil(n_cells / 5)).

    nimfa draws these from an unseeded RandomState, so we draw them here (same order of draws)
    and hand the factors to either backend. Built with sparse selection matrices: O(nnz * rank).
    Returns W (n_cells, rank) and H (rank, n_peaks), float64.
    """
    n_cells, n_peaks = X.shape
    p_c = p_c or int(math.ceil(n_peaks / 5))
    p_r = p_r or int(math.ceil(n_cells / 5))
    rng = np.random.RandomState(seed)
    cols, rows = [], []
    for _ in range(rank):
        cols.append(rng.randint(low=0, high=n_peaks, size=p_c))
        rows.append(rng.randint(low=0, high=n_cells, size=p_r))
    pick_cols = sp.csr_matrix(
        (np.full(rank * p_c, 1.0 / p_c), (np.concatenate(cols), np.repeat(np.arange(rank), p_c))), shape=(n_peaks, rank)
    )
    pick_rows = sp.csr_matrix(
        (np.full(rank * p_r, 1.0 / p_r), (np.repeat(np.arange(rank), p_r), np.concatenate(rows))), shape=(rank, n_cells)
    )
    Xd = X.astype(np.float64)
    W = np.asarray((Xd @ pick_cols).toarray())
    H = np.asarray((pick_rows @ Xd).toarray())
    return W, H


def _pg_subproblem(WtV, WtW, H, eps, sub_iter, inner_sub_iter, beta):
    """Solve min_{H >= 0} ||V - W H||^2 from WtV = W^T V and WtW = W^T W by projected gradient.

    Lin (2007), Algorithm 4 (the 'nlssubprob' of his MATLAB code), step for step as nimfa's
    Lsnmf._subproblem: a step-size search that shrinks (or grows) alpha by `beta` until the
    sufficient-decrease condition holds. Returns (H, the last gradient, the last iteration index).
    """
    alpha = 1.0
    grad = WtW @ H - WtV
    it = 0
    for it in range(sub_iter):
        grad = WtW @ H - WtV
        projgrad = np.linalg.norm(grad[np.logical_or(grad < 0, H > 0)])
        if projgrad < eps:
            break
        Hp = H
        decr_alpha = True
        for inner in range(inner_sub_iter):
            Hn = np.maximum(H - alpha * grad, 0)
            d = Hn - H
            gradd = float(np.sum(grad * d))
            dQd = float(np.sum((WtW @ d) * d))
            suff_decr = 0.99 * gradd + 0.5 * dQd < 0
            if inner == 0:
                decr_alpha = not suff_decr
                Hp = H
            if decr_alpha:
                if suff_decr:
                    H = Hn
                    break
                alpha *= beta
            else:
                if not suff_decr or np.array_equal(Hp, Hn):
                    H = Hp
                    break
                alpha /= beta
                Hp = Hn
    return H, grad, it


def _projected_norm(grad, factor):
    return grad[np.logical_or(grad < 0, factor > 0)]


def _lsnmf_sparse(X, W, H, max_iter, sub_iter, inner_sub_iter, beta, min_residuals):
    """Alternating non-negative least squares by projected gradient (Lin 2007) with X sparse and
    W (n_cells, rank), H (rank, n_peaks) dense: the only products with X are X H^T and X^T W,
    O(nnz * rank) each. Mirrors nimfa 1.4.0's Lsnmf.factorize/update/objective, including its
    stopping rule, so the two backends give the same factors from the same start.
    """
    dtype = X.dtype
    XT = X.T.tocsr()

    def x_ht(H):  # X H^T: (n_cells, rank)
        return np.asarray(X @ H.T.astype(dtype), dtype=np.float64)

    def wt_x(W):  # W^T X: (rank, n_peaks)
        return np.asarray(XT @ W.astype(dtype), dtype=np.float64).T

    gW = W @ (H @ H.T) - x_ht(H)
    gH = (W.T @ W) @ H - wt_x(W)
    # nimfa computes its initial gradient norm as norm(vstack(gW, gH.T)); its vstack takes one
    # sequence, so only gW is stacked (Lin's code uses [gW; gH^T]). Kept for identical results.
    init_grad = float(np.linalg.norm(gW))
    epsW = max(1e-3, min_residuals) * init_grad
    epsH = epsW
    iterW = iterH = 10
    objective = sys.float_info.max
    history = []
    n_iter = 0
    while True:
        if max_iter and max_iter <= n_iter:
            break
        if n_iter > 0 and objective < min_residuals * init_grad:
            break
        if iterW == 0 and iterH == 0 and epsW + epsH < min_residuals * init_grad:
            break
        Wt, gWt, iterW = _pg_subproblem(x_ht(H).T, H @ H.T, W.T, epsW, sub_iter, inner_sub_iter, beta)
        W, gW = Wt.T, gWt.T
        epsW = 0.1 * epsW if iterW == 0 else epsW
        H, gH, iterH = _pg_subproblem(wt_x(W), W.T @ W, H, epsH, sub_iter, inner_sub_iter, beta)
        epsH = 0.1 * epsH if iterH == 0 else epsH
        n_iter += 1
        objective = float(np.sqrt(np.sum(_projected_norm(gW, W) ** 2) + np.sum(_projected_norm(gH, H) ** 2)))
        history.append(objective)
    return W, H, {"n_iter": n_iter, "projected_gradient_norm": objective, "init_grad": init_grad, "history": history}


def fit_lsnmf(X: sp.csr_matrix, rank: int, seed: int = 0, *, dense_limit_bytes: int = LSNMF_DENSE_LIMIT_BYTES,
              init: tuple | None = None, **options):
    """LSNMF: alternating non-negative least squares by projected gradient (Lin 2007).

    X: CSR (n_cells, n_peaks) counts; options are LSNMF_OPTIONS (checked there; sub_iter,
    inner_sub_iter and beta are the original notebook's). `transform` (default idf, see
    factorization_input) makes V, the matrix factorized; 'counts' factorizes X as given.
    backend: 'nimfa' runs nimfa.Lsnmf on a dense float64 copy of X; 'sparse' runs this
    module's solver with X sparse and dense factors; 'auto' picks nimfa when the dense copy
    (n_cells * n_peaks * 8 bytes) is below `dense_limit_bytes` (1 GiB), else 'sparse'.
    Both start from `random_vcol_init(X, rank, seed)` unless `init=(W0, H0)` is given.
    Returns (cell_factors (n_cells, rank) float32, loadings (rank, n_peaks) float32, info dict).
    """
    n_cells, n_peaks = X.shape
    rank = check_rank(rank, n_cells, n_peaks)
    o = LSNMF_OPTIONS.resolve(options, where="lsnmf")
    transform, max_iter, backend = o["transform"], o["max_iter"], o["backend"]
    sub_iter, inner_sub_iter, beta, min_residuals = o["sub_iter"], o["inner_sub_iter"], o["beta"], o["min_residuals"]
    X = factorization_input(X, transform)
    dense_bytes = n_cells * n_peaks * 8
    if backend == "auto":
        backend = "nimfa" if dense_bytes < dense_limit_bytes else "sparse"
    W0, H0 = init if init is not None else random_vcol_init(X, rank, seed)
    W0 = np.array(W0, dtype=np.float64)
    H0 = np.array(H0, dtype=np.float64)
    started = time.perf_counter()
    if backend == "nimfa":
        nimfa = import_nimfa()
        with warnings.catch_warnings():
            # nimfa is built on np.matrix, which NumPy flags as pending deprecation on every use
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            model = nimfa.Lsnmf(
                X.toarray().astype(np.float64), seed=None, W=W0, H=H0, rank=rank, max_iter=max_iter,
                sub_iter=sub_iter, inner_sub_iter=inner_sub_iter, beta=beta, min_residuals=min_residuals,
            )
            fit = model()
        W = np.asarray(fit.basis(), dtype=np.float64)
        H = np.asarray(fit.coef(), dtype=np.float64)
        details = {"n_iter": int(fit.fit.n_iter), "projected_gradient_norm": float(fit.fit.final_obj)}
    else:
        W, H, details = _lsnmf_sparse(X, W0, H0, max_iter, sub_iter, inner_sub_iter, beta, min_residuals)
    info_dict = {
        "backend": backend,
        "transform": transform,
        "dense_copy_bytes": dense_bytes,
        "rank": rank,
        "seed": seed,
        "init": "random_vcol" if init is None else "given",
        "max_iter": max_iter,
        "sub_iter": sub_iter,
        "inner_sub_iter": inner_sub_iter,
        "beta": beta,
        "fit_s": time.perf_counter() - started,
        "reconstruction_err": factorization_error(X, W, H),
        **details,
    }
    return W.astype(np.float32), H.astype(np.float32), info_dict


def fit_nmf(X: sp.csr_matrix, rank: int, seed: int = 0, *, batch_size: int = 1024,
            minibatch_above: int = MINIBATCH_NMF_ABOVE, **options):
    """NMF by scikit-learn on the sparse matrix (Frobenius loss): X ~ W H.

    X: CSR (n_cells, n_peaks) counts; options are NMF_OPTIONS (checked there). `transform`
    (default idf, see factorization_input) makes V, the matrix factorized; 'counts' factorizes
    X as given. V is never densified (sklearn's NMF and MiniBatchNMF work on sparse input).
    Defaults (init nndsvda, solver mu; idf input) were chosen by measurement on ../shared/data.
    backend: 'full' (sklearn.decomposition.NMF with `init` and `solver`), 'minibatch'
    (MiniBatchNMF, multiplicative updates over `batch_size` cells) or 'auto': minibatch
    above `minibatch_above` cells.
    Returns (cell_factors (n_cells, rank) float32, loadings (rank, n_peaks) float32, info dict).
    """
    from sklearn.decomposition import NMF, MiniBatchNMF
    from sklearn.exceptions import ConvergenceWarning

    n_cells, n_peaks = X.shape
    rank = check_rank(rank, n_cells, n_peaks)
    o = NMF_OPTIONS.resolve(options, where="nmf")
    transform, max_iter, init, solver, tol, backend = (o[k] for k in ("transform", "max_iter", "init", "solver", "tol", "backend"))
    if backend == "auto":
        backend = "minibatch" if n_cells > minibatch_above else "full"
    X = factorization_input(X, transform)
    if backend == "full":
        model = NMF(n_components=rank, init=init, solver=solver, max_iter=max_iter, tol=tol, random_state=seed)
    else:
        model = MiniBatchNMF(n_components=rank, init=init, batch_size=batch_size, max_iter=max_iter, tol=tol,
                             random_state=seed)
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        W = model.fit_transform(X)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    H = model.components_
    info_dict = {
        "backend": backend,
        "transform": transform,
        "rank": rank,
        "seed": seed,
        "init": init,
        "solver": solver if backend == "full" else "mu",
        "max_iter": max_iter,
        "tol": tol,
        "n_iter": int(model.n_iter_),
        "converged": converged,
        "fit_s": time.perf_counter() - started,
        "reconstruction_err": factorization_error(X, W, H),
    }
    if backend == "minibatch":
        info_dict["batch_size"] = batch_size
    return np.asarray(W, dtype=np.float32), np.asarray(H, dtype=np.float32), info_dict


LSI_TRANSFORMS = ("tfidf", "idf")


def lsi(X: sp.csr_matrix, n_components: int, seed: int = 0, drop_first: bool = True, transform: str = "tfidf",
        unit_variance: bool = True) -> np.ndarray:
    """Latent semantic indexing: a weighted binary matrix, truncated SVD, the first component dropped (with
    tfidf it follows depth; with idf's unit rows, the mean profile; dropping it scored higher on both).

    transform "tfidf": Signac's and ArchR's recipe, log1p(TF x IDF x 1e4) without L2 normalization;
    "idf": the binary matrix weighted by log(n_cells / cells opening the peak), rows L2-normalized
    (pp.idf, SnapATAC2's weighting), the input the factorizations take by default, so that they
    meet LSI on the same input.
    Returns (n_cells, n_components) float32 scores, each component scaled to unit variance as
    Signac's RunSVD does (unit_variance), or weighted by its singular value (U S, as
    TruncatedSVD gives them), so that the leading components count for more in distances.
    """
    from sklearn.decomposition import TruncatedSVD

    if transform not in LSI_TRANSFORMS:
        fail("transform", f"must be one of {', '.join(map(repr, LSI_TRANSFORMS))}, got {transform!r}")
    T = tfidf(X, l2_normalize=False) if transform == "tfidf" else idf(X)
    k = n_components + (1 if drop_first else 0)
    k = min(k, min(T.shape) - 1)
    svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=seed)
    scores = svd.fit_transform(T)
    if drop_first:
        scores = scores[:, 1:]
    if unit_variance:
        scores = scores / np.maximum(scores.std(axis=0, keepdims=True), 1e-12)
    return scores.astype(np.float32)
