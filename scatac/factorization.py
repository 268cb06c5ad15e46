"""Matrix factorizations of the cells x peaks matrix V ~ W H, and LSI.

W (n_cells, rank), the cell factors, are the features; H (rank, n_peaks), the peak loadings, say
which peaks each factor opens. NMF is scikit-learn's on the sparse matrix; LSNMF is nimfa's Lsnmf
(Lin 2007) on a dense copy while that is under 1 GiB, else this module's sparse solver of the same
algorithm. LSI (TF-IDF, truncated SVD) is the reference every comparison includes.

From an on-disk store (scatac.io.store), never holding the matrix: fit_nmf_stored (MiniBatchNMF's
partial_fit over the store's blocks), fit_lsnmf_stored (the sparse solver, each product with V one
pass) and lsi_stored (a randomized SVD, each product with the matrix one pass), each block
transformed with weights fitted on all cells (StoredInput).
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
from .pp import idf, reference_neighbors, tfidf, transform

# nimfa works on a dense float64 copy of V; above this size LSNMF uses the sparse solver below.
LSNMF_DENSE_LIMIT_BYTES = 1 << 30
# sklearn's NMF never densifies a sparse X (its memory is X plus the factors), so full batch
# "fits" wherever X does; on simulated cells it was as good as MiniBatchNMF and faster (docs/benchmarks.md).
# MiniBatchNMF takes over only where one full pass per update gets long; this threshold is a guard, not a
# measured crossover.
MINIBATCH_NMF_ABOVE = 200000

# The options of each factorization. The defaults were chosen by measurement on the labelled sets of the
# benchmarks page (docs/benchmarks.md, "Input transform" and "Defaults of the methods"): idf input beat tfidf for
# both methods on every set, as tfidf had beaten counts and binary; NMF converges well within 400 iterations there
# (tol 1e-4), so 400 only guards larger data; LSNMF's original 12 iterations stop short of convergence, and 50
# leave room (its own stopping rule rarely fires).
NMF_OPTIONS = Options(
    FACTORIZATION_TRANSFORM,
    Param("max_iter", int, 400, "most multiplicative-update iterations", low=1),
    Param("init", str, "nndsvda", "scikit-learn NMF start", choices=("nndsvda", "nndsvd", "nndsvdar", "random")),
    Param("solver", str, "mu", "mu: multiplicative updates; cd: coordinate descent", choices=("mu", "cd")),
    Param("tol", float, 1e-4, "stopping tolerance", low=0, low_open=True),
    Param("backend", str, "auto", f"full NMF, or MiniBatchNMF (auto: above {MINIBATCH_NMF_ABOVE} cells)",
          choices=("auto", "full", "minibatch")),
    # the autoencoders' neighbour term, for NMF: the cell factors kept smooth over the cells' reference neighbours
    # (docs/benchmarks.md, "Graph-regularized NMF")
    Param("graph_weight", float, 30.0, "weight of the graph term (graph-regularized NMF, Cai et al. 2011): the cell "
                                       "factors of each cell and its reference neighbours pulled together, relative "
                                       "to the reconstruction's size; 0 turns it off, as does a store (default 30)",
          low=0),
    # 50 keeps the refinement within what a default may cost against the plain fit (docs/benchmarks.md,
    # "Graph-regularized NMF")
    Param("graph_iter", int, 50, "multiplicative updates of the graph-regularized objective after the plain fit "
                                 "(default 50)", low=1),
    # the products with V dominate an update; repeating W's update on them (the graph term acts on W) reached on sets
    # where 50 single updates had not converged what 100 reach, at 50's cost (docs/benchmarks.md, "Graph-regularized
    # NMF")
    Param("graph_w_updates", int, 2, "updates of the cell factors per product with the matrix in each graph update "
                                     "(accelerated multiplicative updates, Gillis and Glineur 2012; default 2)",
          low=1),
)
LSNMF_OPTIONS = Options(
    FACTORIZATION_TRANSFORM,
    Param("max_iter", int, 50, "most outer iterations (each solves W then H)", low=1),
    Param("sub_iter", int, 10, "projected-gradient iterations per half-step", low=1),
    Param("inner_sub_iter", int, 10, "step-size search iterations", low=1),
    Param("beta", float, 0.1, "step-size shrink factor", low=0, high=1, low_open=True, high_open=True),
    Param("min_residuals", float, 1e-5, "stop when the projected gradient falls below this fraction of its start",
          low=0, low_open=True),
    Param("backend", str, "auto", "nimfa on a dense copy, or the sparse solver (auto: nimfa while the copy is < 1 GiB "
                                  "and there is no graph term)",
          choices=("auto", "nimfa", "sparse")),
    # NMF's graph term inside LSNMF's own algorithm: the W half-step's least squares gains lambda tr(W^T L W)
    # (docs/benchmarks.md, "Graph-regularized LSNMF"); above 3 it cut a set's types it had held
    Param("graph_weight", float, 3.0, "weight of the graph term (as NMF's, solved inside each W half-step): the cell "
                                      "factors of each cell and its reference neighbours pulled together, relative to "
                                      "the reconstruction's size; needs the sparse solver; 0 turns it off, as does a "
                                      "store (default 3)", low=0),
)


def check_rank(rank, n_cells: int, n_peaks: int, source="rank") -> int:
    """`rank` as an int: a whole number >= 1, below the peaks kept and at most the cells kept."""
    rank = LATENT_DIM.check(rank, "rank")
    check_latent_size(rank, n_cells, n_peaks, name="rank", source=source)
    return rank


def factorization_input(X: sp.csr_matrix, kind: str) -> sp.csr_matrix:
    """The non-negative matrix a factorization works on: the counts as they are, or a transform of them.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix
        (n_cells, n_peaks) counts.
    kind : str
        'counts' (X as it is, as floats) or a transform ('binary', 'tfidf', 'idf', 'log', 'maxabs').

    Returns
    -------
    scipy.sparse.csr_matrix
        (n_cells, n_peaks) float, non-negative.
    """
    kind = FACTORIZATION_TRANSFORM.check(kind)
    if kind == "counts":
        X = sp.csr_matrix(X)
        return X if np.issubdtype(X.dtype, np.floating) else X.astype(np.float32)
    return transform(X, kind)


def import_nimfa():
    """Import nimfa 1.4.0 under NumPy 2, the one compatibility step this suite takes.

    nimfa 1.4.0 (its last release) calls `np.mat` in its dense code paths; NumPy 2.0 removed that alias of
    `np.asmatrix` (the same function: NumPy 1.x defined `mat = asmatrix`). The alias is restored only if it is missing,
    and nothing else is touched. Pinning NumPy below 2 is not an option: this stack (numpy 2.4, scipy 1.17,
    scikit-learn 1.9, torch) needs NumPy 2.

    Returns
    -------
    module
        nimfa.
    """
    if not hasattr(np, "mat"):
        np.mat = np.asmatrix
    import nimfa

    return nimfa


def _squared_error(X: sp.csr_matrix, W: np.ndarray, H: np.ndarray) -> float:
    """||X - W H||^2 from X's non-zeros and the small factors; a sum over row blocks of X (and W) is the whole's."""
    Xd = X.astype(np.float64) if X.dtype != np.float64 else X
    squared = float(Xd.data @ Xd.data)
    squared -= 2.0 * float(np.sum(np.asarray(Xd @ H.T) * W))
    squared += float(np.sum((W.T @ W) * (H @ H.T)))
    return squared


def factorization_error(X: sp.csr_matrix, W: np.ndarray, H: np.ndarray) -> float:
    """Frobenius norm ||X - W H|| computed from X's non-zeros and the small factors, never densifying X."""
    return math.sqrt(max(_squared_error(X, W, H), 0.0))


def random_vcol_init(X: sp.csr_matrix, rank: int, seed: int = 0, p_c: int | None = None, p_r: int | None = None):
    """nimfa's 'random_vcol' start, seeded.

    Column k of W is the mean of `p_c` random columns of X, row k of H the mean of `p_r` random rows. nimfa draws these
    from an unseeded RandomState, so the suite draws them here (in the same order) and hands the factors to either
    backend. Built with sparse selection matrices: O(nnz x rank).

    Parameters
    ----------
    X : scipy.sparse.csr_matrix
        (n_cells, n_peaks), the matrix factorized.
    rank : int
        The factors.
    seed : int
        The draws' seed.
    p_c : int or None
        Columns averaged per factor (default ceil(n_peaks / 5)).
    p_r : int or None
        Rows averaged per factor (default ceil(n_cells / 5)).

    Returns
    -------
    W : numpy.ndarray
        (n_cells, rank) float64.
    H : numpy.ndarray
        (rank, n_peaks) float64.
    """
    pick_cols, pick_rows = _vcol_picks(*X.shape, rank, seed, p_c, p_r)
    Xd = X.astype(np.float64)
    W = np.asarray((Xd @ pick_cols).toarray())
    H = np.asarray((pick_rows @ Xd).toarray())
    return W, H


def _vcol_picks(n_cells: int, n_peaks: int, rank: int, seed: int, p_c: int | None = None, p_r: int | None = None):
    """random_vcol_init's draws as two averaging matrices: pick_cols (n_peaks, rank) CSR, so that X pick_cols is W,
    and pick_rows (rank, n_cells) CSR, so that pick_rows X is H; drawn in nimfa's order from RandomState(seed)."""
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
    return pick_cols, pick_rows


def _pg_subproblem(WtV, WtW, H, eps, sub_iter, inner_sub_iter, beta, graph=None):
    """Solve min_{H >= 0} ||V - W H||^2 from WtV = W^T V and WtW = W^T W by projected gradient.

    Lin (2007), Algorithm 4 (the 'nlssubprob' of his MATLAB code), step for step as nimfa's
    Lsnmf._subproblem: a step-size search that shrinks (or grows) alpha by `beta` until the
    sufficient-decrease condition holds. Returns (H, the last gradient, the last iteration index).
    With `graph` = (lam, adjacency, degree) over H's columns, the objective gains lam tr(H L H^T), L = D - A: the
    gradient gains 2 lam H L and the quadratic form lam tr(d L d^T) (both halved, as Lin's are: the least squares'
    gradient is taken as W^T W H - W^T V).
    """
    def gradient(H):
        grad = WtW @ H - WtV
        if graph is not None:
            lam, adjacency, degree = graph
            grad += lam * (H * degree - (adjacency @ H.T).T)
        return grad

    def curvature(d):  # d^T Q d of the quadratic objective along the step d
        dQd = float(np.sum((WtW @ d) * d))
        if graph is not None:
            lam, adjacency, degree = graph
            dQd += lam * float(np.sum(d * d * degree) - np.sum(d * (adjacency @ d.T).T))
        return dQd

    alpha = 1.0
    grad = gradient(H)
    it = 0
    for it in range(sub_iter):
        grad = gradient(H)
        projgrad = np.linalg.norm(grad[np.logical_or(grad < 0, H > 0)])
        if projgrad < eps:
            break
        Hp = H
        decr_alpha = True
        for inner in range(inner_sub_iter):
            Hn = np.maximum(H - alpha * grad, 0)
            d = Hn - H
            gradd = float(np.sum(grad * d))
            dQd = curvature(d)
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


def _lsnmf_sparse(X, W, H, max_iter, sub_iter, inner_sub_iter, beta, min_residuals, graph=None):
    """Alternating non-negative least squares by projected gradient (Lin 2007) with X sparse and
    W (n_cells, rank), H (rank, n_peaks) dense: the only products with X are X H^T and X^T W,
    O(nnz * rank) each. Mirrors nimfa 1.4.0's Lsnmf.factorize/update/objective, including its
    stopping rule, so the two backends give the same factors from the same start. `graph` as
    _lsnmf_solve takes it.
    """
    dtype = X.dtype
    XT = X.T.tocsr()

    def x_ht(H):  # X H^T: (n_cells, rank)
        return np.asarray(X @ H.T.astype(dtype), dtype=np.float64)

    def wt_x(W):  # W^T X: (rank, n_peaks)
        return np.asarray(XT @ W.astype(dtype), dtype=np.float64).T

    return _lsnmf_solve(x_ht, wt_x, W, H, max_iter, sub_iter, inner_sub_iter, beta, min_residuals, graph)


def _lsnmf_solve(x_ht, wt_x, W, H, max_iter, sub_iter, inner_sub_iter, beta, min_residuals, graph=None):
    """_lsnmf_sparse's iterations, given its two products with X as functions: x_ht(H) -> X H^T (n_cells, rank) and
    wt_x(W) -> W^T X (rank, n_peaks), float64. In memory they are sparse products; from a store, each is one pass over
    its blocks (fit_lsnmf_stored). Each iteration calls each once. Returns (W, H, details) as _lsnmf_sparse.

    With `graph` = (lam, adjacency, degree) over the cells, W's half-step solves the graph-regularized least squares
    min_{W >= 0} ||X - W H||^2 + lam tr(W^T L W) (GNMF's objective, Cai et al. 2011) by the same projected gradient; H's
    is unchanged, so every half-step still lowers that objective."""
    gW = W @ (H @ H.T) - x_ht(H)
    if graph is not None:
        lam, adjacency, degree = graph
        gW += lam * (degree[:, None] * W - adjacency @ W)
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
        Wt, gWt, iterW = _pg_subproblem(x_ht(H).T, H @ H.T, W.T, epsW, sub_iter, inner_sub_iter, beta, graph)
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
    """LSNMF: alternating non-negative least squares by projected gradient (Lin 2007), V ~ W H.

    V is `transform` of X (the IDF-weighted binary matrix by default; 'counts' factorizes X as given). Backend
    'nimfa' runs nimfa.Lsnmf on a dense float64 copy of V; 'sparse' runs this module's solver with V sparse and dense
    factors (from the same start it reproduces nimfa's result to rounding); 'auto' takes nimfa while the dense copy
    (n_cells x n_peaks x 8 bytes) is below `dense_limit_bytes` and `graph_weight` is 0, else 'sparse'. Both start from
    `random_vcol_init(V, rank, seed)` unless `init` is given. With `graph_weight` > 0 (the default) each W half-step
    solves the graph-regularized least squares of graph-regularized NMF over the cells' reference neighbours
    (`scatac.pp.reference_neighbors` of X, `rank` components; lambda set from the start as `graph_regularized_updates`
    sets it), by the same projected gradient: only the sparse solver has it.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix
        (n_cells, n_peaks) counts.
    rank : int
        The factors, the latent dimension.
    seed : int
        The random_vcol start's seed.
    dense_limit_bytes : int
        'auto' takes nimfa below this size of a dense copy (1 GiB).
    init : tuple of numpy.ndarray or None
        (W0, H0), the start, instead of random_vcol.
    **options
        `LSNMF_OPTIONS`: transform, max_iter, sub_iter, inner_sub_iter, beta, min_residuals, backend, graph_weight
        (checked there; sub_iter, inner_sub_iter and beta are the original notebook's).

    Returns
    -------
    cell_factors : numpy.ndarray
        (n_cells, rank) float32, W.
    loadings : numpy.ndarray
        (rank, n_peaks) float32, H.
    info : dict
        backend, transform, dense_copy_bytes, rank, seed, init, max_iter, sub_iter, inner_sub_iter, beta,
        graph_weight, graph_lambda (0 without the graph term), fit_s, reconstruction_err (the Frobenius norm of
        V - W H), n_iter and projected_gradient_norm (the sparse solver adds its history).
    """
    n_cells, n_peaks = X.shape
    rank = check_rank(rank, n_cells, n_peaks)
    o = LSNMF_OPTIONS.resolve(options, where="lsnmf")
    transform, max_iter, backend = o["transform"], o["max_iter"], o["backend"]
    sub_iter, inner_sub_iter, beta, min_residuals = o["sub_iter"], o["inner_sub_iter"], o["beta"], o["min_residuals"]
    graph_weight = o["graph_weight"] if n_cells > 1 else 0.0
    if backend == "nimfa" and graph_weight > 0:
        fail("backend", f"nimfa has no graph term (graph_weight {graph_weight:g}): use backend 'auto' or 'sparse', or "
                        "graph_weight 0 with nimfa")
    counts, X = X, factorization_input(X, transform)
    dense_bytes = n_cells * n_peaks * 8
    if backend == "auto":
        backend = "nimfa" if dense_bytes < dense_limit_bytes and graph_weight == 0 else "sparse"
    W0, H0 = init if init is not None else random_vcol_init(X, rank, seed)
    W0 = np.array(W0, dtype=np.float64)
    H0 = np.array(H0, dtype=np.float64)
    started = time.perf_counter()
    graph, lam = None, 0.0
    if graph_weight > 0:
        adjacency, degree = neighbor_graph_parts(reference_neighbors(counts, n_components=rank, seed=seed))
        lam = _graph_lambda(X, W0, degree, graph_weight)
        graph = (lam, adjacency, degree)
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
        W, H, details = _lsnmf_sparse(X, W0, H0, max_iter, sub_iter, inner_sub_iter, beta, min_residuals, graph)
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
        "graph_weight": graph_weight,
        "graph_lambda": lam,
        "fit_s": time.perf_counter() - started,
        "reconstruction_err": factorization_error(X, W, H),
        **details,
    }
    return W.astype(np.float32), H.astype(np.float32), info_dict


def neighbor_graph_parts(neighbors: np.ndarray) -> tuple:
    """The symmetric 0/1 adjacency of the cells' reference neighbours and its degrees: the graph Laplacian's parts.

    Parameters
    ----------
    neighbors : numpy.ndarray
        (n_cells, k) int, each cell's neighbours (`scatac.pp.reference_neighbors`).

    Returns
    -------
    adjacency : scipy.sparse.csr_matrix
        (n_cells, n_cells) float64: 1 where either cell lists the other.
    degree : numpy.ndarray
        (n_cells,) float64, the row sums.
    """
    n_cells = neighbors.shape[0]
    rows = np.repeat(np.arange(n_cells), neighbors.shape[1])
    listed = sp.csr_matrix((np.ones(rows.size), (rows, neighbors.ravel())), shape=(n_cells, n_cells))
    adjacency = ((listed + listed.T) > 0).astype(np.float64).tocsr()
    return adjacency, np.asarray(adjacency.sum(axis=1)).ravel()


def _graph_lambda(V: sp.csr_matrix, W: np.ndarray, degree: np.ndarray, weight: float) -> float:
    """The graph term's lambda: `weight` x (||V||^2 / n_cells) / (mean degree x ||W||^2 / n_cells), the reconstruction's
    size a cell over the graph term's size a cell at W, so that one weight holds on inputs of any scale."""
    n_cells = V.shape[0]
    tiny = np.finfo(np.float64).eps
    return float(weight * (V.multiply(V).sum() / n_cells) / max(degree.mean() * (W ** 2).sum() / n_cells, tiny))


def graph_regularized_updates(V: sp.csr_matrix, W: np.ndarray, H: np.ndarray, neighbors: np.ndarray, weight: float,
                              n_iter: int, w_updates: int = 1) -> tuple:
    """Graph-regularized NMF (GNMF; Cai, He, Han and Huang, TPAMI 2011) by multiplicative updates from (W, H).

    Minimizes ||V - W H||_F^2 + lambda tr(W^T L W), L = D - A the Laplacian of the cells' symmetric neighbour graph:
    the second term is half the sum, over neighbouring cells, of the squared distance between their cell factors, so
    it keeps cells that are near under the reference geometry near in the factors (the autoencoders' neighbour term,
    for NMF). The updates are Cai et al.'s: W <- W (V H^T + lambda A W) / (W H H^T + lambda D W), H <- H (W^T V) /
    (W^T W H), each non-increasing in the objective. lambda = `weight` x (||V||^2 / n_cells) / (mean degree x ||W||^2
    / n_cells) at the start, so that one weight holds on inputs of any scale. Each of the `n_iter` steps computes
    V H^T once and updates W `w_updates` times on it (Gillis and Glineur, Neural Computation 2012: the product with
    the sparse V costs O(nnz x rank), a repeated update of W only O(n_cells x rank^2) and the graph's product), then H
    once; every update is still non-increasing.

    Parameters
    ----------
    V : scipy.sparse.csr_matrix
        (n_cells, n_peaks) the factorized input.
    W, H : numpy.ndarray
        (n_cells, rank) and (rank, n_peaks), the start (a plain NMF fit).
    neighbors : numpy.ndarray
        (n_cells, k) each cell's reference neighbours.
    weight : float
        The graph term's relative weight.
    n_iter : int
        Steps, each one product with V for W and one for H.
    w_updates : int
        Updates of W per step.

    Returns
    -------
    W, H : numpy.ndarray
        float64, the refined factors.
    lam : float
        lambda as used.
    """
    tiny = np.finfo(np.float64).eps
    adjacency, degree = neighbor_graph_parts(neighbors)
    V = sp.csr_matrix(V, dtype=np.float64)
    V_t = V.T.tocsr()  # W^T V as (V^T W)^T: one CSR product a step, not a transposed copy each time
    W, H = np.array(W, dtype=np.float64), np.array(H, dtype=np.float64)
    n_cells = V.shape[0]
    lam = _graph_lambda(V, W, degree, weight)
    for _ in range(n_iter):
        VHt, HHt = V @ H.T, H @ H.T
        for _ in range(w_updates):
            W *= (VHt + lam * (adjacency @ W)) / np.maximum(W @ HHt + lam * degree[:, None] * W, tiny)
        H *= (V_t @ W).T / np.maximum((W.T @ W) @ H, tiny)
    return W, H, float(lam)


def fit_nmf(X: sp.csr_matrix, rank: int, seed: int = 0, *, batch_size: int = 1024,
            minibatch_above: int = MINIBATCH_NMF_ABOVE, **options):
    """NMF by scikit-learn on the sparse matrix (Frobenius loss), V ~ W H.

    V is `transform` of X (the IDF-weighted binary matrix by default; 'counts' factorizes X as given), never densified:
    scikit-learn's NMF and MiniBatchNMF work on sparse input. The defaults (init nndsvda, solver mu, idf input) were
    chosen by measurement (the documentation's benchmarks page). Backend 'full' is sklearn.decomposition.NMF with
    `init` and `solver`; 'minibatch' is MiniBatchNMF, multiplicative updates over `batch_size` cells; 'auto' takes
    minibatch above `minibatch_above` cells. With `graph_weight` > 0 the fit is then refined by `graph_iter` updates of
    graph-regularized NMF (`graph_regularized_updates`) over the cells' reference neighbours
    (`scatac.pp.reference_neighbors` of X, `rank` components: the autoencoders' neighbour term's geometry).

    Parameters
    ----------
    X : scipy.sparse.csr_matrix
        (n_cells, n_peaks) counts.
    rank : int
        The factors, the latent dimension.
    seed : int
        The start's and scikit-learn's random state.
    batch_size : int
        MiniBatchNMF's cells per step.
    minibatch_above : int
        'auto' takes MiniBatchNMF above this many cells.
    **options
        `NMF_OPTIONS`: transform, max_iter, init, solver, tol, backend, graph_weight, graph_iter,
        graph_w_updates (checked there).

    Returns
    -------
    cell_factors : numpy.ndarray
        (n_cells, rank) float32, W.
    loadings : numpy.ndarray
        (rank, n_peaks) float32, H.
    info : dict
        backend, transform, rank, seed, init, solver, max_iter, tol, n_iter (the plain fit's), converged, graph_weight,
        graph_iter, graph_w_updates and graph_lambda (lambda as used; 0 without the graph term), fit_s,
        reconstruction_err (the Frobenius norm of V - W H) and, for minibatch, batch_size.
    """
    from sklearn.decomposition import NMF, MiniBatchNMF
    from sklearn.exceptions import ConvergenceWarning

    n_cells, n_peaks = X.shape
    rank = check_rank(rank, n_cells, n_peaks)
    o = NMF_OPTIONS.resolve(options, where="nmf")
    transform, max_iter, init, solver, tol, backend = (o[k] for k in ("transform", "max_iter", "init", "solver", "tol", "backend"))
    graph_weight, graph_iter, graph_w_updates = o["graph_weight"], o["graph_iter"], o["graph_w_updates"]
    if backend == "auto":
        backend = "minibatch" if n_cells > minibatch_above else "full"
    counts, X = X, factorization_input(X, transform)
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
    lam = 0.0
    if graph_weight > 0 and n_cells > 1:
        neighbors = reference_neighbors(counts, n_components=rank, seed=seed)
        W, H, lam = graph_regularized_updates(X, W, H, neighbors, graph_weight, graph_iter, graph_w_updates)
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
        "graph_weight": graph_weight if lam > 0 else 0.0,
        "graph_iter": graph_iter if lam > 0 else 0,
        "graph_w_updates": graph_w_updates if lam > 0 else 0,
        "graph_lambda": lam,
        "fit_s": time.perf_counter() - started,
        "reconstruction_err": factorization_error(X, W, H),
    }
    if backend == "minibatch":
        info_dict["batch_size"] = batch_size
    return np.asarray(W, dtype=np.float32), np.asarray(H, dtype=np.float32), info_dict


LSI_TRANSFORMS = ("tfidf", "idf")


def lsi(X: sp.csr_matrix, n_components: int, seed: int = 0, drop_first: bool = True, transform: str = "tfidf",
        unit_variance: bool = True) -> np.ndarray:
    """Latent semantic indexing: a weighted binary matrix, a truncated SVD, the first component dropped.

    With tfidf the first component follows depth; with idf's unit rows, the mean profile; dropping it scored higher on
    both. transform 'tfidf' is Signac's and ArchR's recipe, log1p(TF x IDF x 1e4) without L2 normalization; 'idf' is the
    binary matrix weighted by log(n_cells / cells opening the peak), rows L2-normalized (`scatac.pp.idf`, SnapATAC2's
    weighting), the input the factorizations take by default, so that they meet LSI on the same input.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix
        (n_cells, n_peaks) counts.
    n_components : int
        The components kept.
    seed : int
        The randomized SVD's random state.
    drop_first : bool
        Drop the first component (computing one more).
    transform : {'tfidf', 'idf'}
        The weighting.
    unit_variance : bool
        Scale each component to unit variance, as Signac's RunSVD does; False weights each by its singular value
        (U S, as TruncatedSVD gives them), so that the leading components count for more in distances.

    Returns
    -------
    numpy.ndarray
        (n_cells, n_components) float32 scores.
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


# ---- from an on-disk store (scatac.io.store): the matrix read a block of rows at a time, never whole ----------------

# Cells of the random sample MiniBatchNMF's first step (and its `init`, nndsvda by default) is fitted on: the blocks
# are runs of consecutive cells, and a store sorted by sample or type would start the factors from one of them.
STORE_NMF_INIT_CELLS = 8192
# sklearn's MiniBatchNMF defaults, which the streamed fit reproduces by hand (see _MiniBatchConvergence):
MINIBATCH_FORGET_FACTOR = 0.7
MINIBATCH_MAX_NO_IMPROVEMENT = 10
# LSI's randomized SVD, as TruncatedSVD runs it in `lsi`: its power iterations and oversampling
LSI_POWER_ITERATIONS = 7
LSI_OVERSAMPLES = 10


def _open_counts(counts):
    """`counts` as a StoredCounts: one already open, or a store's path opened (open_store's errors name it)."""
    from .io.store import StoredCounts, open_store

    return counts if isinstance(counts, StoredCounts) else open_store(counts)


class StoredInput:
    """A store's rows as a factorization or LSI reads them, each block transformed with weights fitted on all cells.

    Each block comes out as the same rows of the whole matrix transformed in memory (`factorization_input`, or `lsi`'s
    weighting) would, value for value.

    Parameters
    ----------
    counts : scatac.io.store.StoredCounts or str
        The store, or its path.
    kind : str
        'counts' (the values as stored, float32) or one of `scatac.pp.transform`'s kinds.
    l2_normalize : bool
        tfidf's and idf's rows L2-normalized, as `scatac.pp.transform` gives them; False gives `lsi`'s tfidf
        (Signac's, `pp.tfidf(X, l2_normalize=False)`).
    block_cells : int or None
        The blocks of the one pass that counts the weights' statistics (tfidf, idf and maxabs only; the other kinds are
        row-local and need no pass).
    progress : bool
        A tqdm bar over that pass.

    Attributes
    ----------
    counts : scatac.io.store.StoredCounts
        The store read.
    kind, l2_normalize
        As given.
    weights : numpy.ndarray or None
        (n_peaks,) float64 from `scatac.pp.peak_weights`, or None for the row-local kinds.
    """

    def __init__(self, counts, kind: str, *, l2_normalize: bool = True, block_cells: int | None = None,
                 progress: bool = False):
        from .io.store import DEFAULT_BLOCK_CELLS
        from .pp import peak_weights

        self.counts = _open_counts(counts)
        self.kind = FACTORIZATION_TRANSFORM.check(kind)
        self.l2_normalize = bool(l2_normalize)
        self.weights = None
        if kind in ("tfidf", "idf", "maxabs"):
            statistics = self.counts.statistics(block_cells or DEFAULT_BLOCK_CELLS, progress)
            self.weights = peak_weights(kind, statistics.cells_per_peak, self.counts.n_cells, statistics.peak_max)

    @property
    def shape(self) -> tuple:
        return self.counts.shape

    def __call__(self, block: sp.csr_matrix) -> sp.csr_matrix:
        """`block` (CSR rows of the store's counts) transformed: CSR (rows, n_peaks) float32."""
        from .pp import _weighted_rows, stored_nonzero, transform_rows

        if self.kind == "counts":
            return block
        if self.kind in ("tfidf", "idf") and not self.l2_normalize:
            # pp.transform_rows normalizes every row; LSI's tfidf is pp.tfidf's without it
            X, weights = stored_nonzero(block), self.weights
            if self.kind == "idf":
                return _weighted_rows(X, lambda peaks, rows: weights[peaks], False)
            depth = np.diff(X.indptr)
            return _weighted_rows(X, lambda peaks, rows: np.log1p(1e4 * weights[peaks] / depth[rows]), False)
        return transform_rows(block, self.kind, self.weights)

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows start..stop-1, transformed."""
        return self(self.counts.read_rows(start, stop))

    def cells(self, rows: np.ndarray) -> sp.csr_matrix:
        """The cells `rows` (increasing reads them fastest), transformed, in the order given."""
        return self(self.counts.read_cells(rows))

    def blocks(self, block_cells: int):
        """(first row, transformed CSR block) of `block_cells` consecutive rows, in order."""
        for start, block in self.counts.blocks(block_cells):
            yield start, self(block)


def _progress_bar(progress: bool, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=0, unit=unit, disable=not progress, leave=False, file=sys.stderr)


class _MiniBatchConvergence:
    """MiniBatchNMF's stopping rule (scikit-learn's `_minibatch_convergence`, step for step), which `fit` applies
    and `partial_fit` leaves to its caller: stop when one step changes H by at most `tol` (relative, Frobenius), or
    when an exponentially weighted average of the steps' batch costs has set no new low for `max_no_improvement`
    steps. The first step is not judged (H has only just been initialized)."""

    def __init__(self, n_samples: int, tol: float, max_no_improvement: int | None = MINIBATCH_MAX_NO_IMPROVEMENT):
        self.n_samples, self.tol, self.max_no_improvement = n_samples, tol, max_no_improvement
        self.steps = 0
        self.ewa_cost = self.ewa_cost_min = None
        self.no_improvement = 0

    def converged(self, batch_rows: int, batch_cost: float | None, H: np.ndarray, H_before: np.ndarray) -> bool:
        self.steps += 1
        if self.steps == 1:
            return False
        H_diff = np.linalg.norm(H - H_before) / np.linalg.norm(H)
        if self.tol > 0 and H_diff <= self.tol:
            return True
        if batch_cost is None:  # a scikit-learn that no longer reports the batch cost: the H rule alone
            return False
        if self.ewa_cost is None:
            self.ewa_cost = batch_cost
        else:
            alpha = min(batch_rows / (self.n_samples + 1), 1.0)
            self.ewa_cost = self.ewa_cost * (1 - alpha) + batch_cost * alpha
        if self.ewa_cost_min is None or self.ewa_cost < self.ewa_cost_min:
            self.no_improvement = 0
            self.ewa_cost_min = self.ewa_cost
        else:
            self.no_improvement += 1
        return self.max_no_improvement is not None and self.no_improvement >= self.max_no_improvement


def _reporting_minibatch_nmf(**params):
    """A MiniBatchNMF that keeps the cost of its last mini-batch step as `batch_cost_`.

    `partial_fit` computes that cost (scikit-learn's `_minibatch_step` returns it) but drops it; the stopping rule
    `fit` applies needs it. Overriding the private step is the one way to read it without computing each batch's
    factors twice; should a scikit-learn release rename the step, `batch_cost_` stays unset and the fit stops by
    the change of H alone.
    """
    from sklearn.decomposition import MiniBatchNMF

    class ReportingMiniBatchNMF(MiniBatchNMF):
        def _minibatch_step(self, X, W, H, update_H):
            cost = super()._minibatch_step(X, W, H, update_H)
            self.batch_cost_ = float(cost)
            return cost

    return ReportingMiniBatchNMF(**params)


def fit_nmf_stored(counts, rank: int, seed: int = 0, *, batch_size: int = 1024, block_cells: int | None = None,
                   init_cells: int | None = None, progress: bool = False, **options):
    """NMF (Frobenius loss) of a store's transformed counts by scikit-learn's MiniBatchNMF, one block of rows at a time.

    The counts are never held whole: each pass reads the store's blocks of `block_cells` consecutive cells in a random
    order (default_rng([seed, pass])), transforms each with the store-wide weights (`StoredInput`), shuffles its cells
    and hands them to `partial_fit` in mini-batches of about `batch_size`. The first step is a random sample of
    `init_cells` cells (default_rng(seed)), on which `init` starts H. Then `transform` solves each block's cell factors
    with H fixed, in store order. The forgetting factor is set so that each step weighs the past as MiniBatchNMF's
    `fit` weighs it on all cells (`partial_fit` would take its first call's rows for all of them), and the passes stop
    by `fit`'s rule or after `max_iter` passes.

    Parameters
    ----------
    counts : scatac.io.store.StoredCounts or str
        The store (cells x peaks), or its path.
    rank : int
        The factors, the latent dimension (`check_rank`'s rules).
    seed : int
        The init sample, the block and cell orders and MiniBatchNMF's random_state.
    batch_size : int
        Cells per `partial_fit` step (the in-memory minibatch backend's batch_size); at most `block_cells`, since a
        step takes its cells from one block.
    block_cells : int or None
        Cells read at a time (None: the store's DEFAULT_BLOCK_CELLS); memory grows with it.
    init_cells : int or None
        Cells of the first step's random sample (None: STORE_NMF_INIT_CELLS).
    progress : bool
        A tqdm bar over each pass's blocks, then the transform's.
    **options
        `NMF_OPTIONS`. max_iter counts passes over the store; transform makes V (default idf); init and tol as
        MiniBatchNMF takes them; graph_weight, graph_iter and graph_w_updates are not used (the graph term is off from a store). backend must be 'auto' or 'minibatch' and solver 'mu' (MiniBatchNMF has
        multiplicative updates only): anything else is an InputError.

    Returns
    -------
    cell_factors : numpy.ndarray
        (n_cells, rank) float32, W.
    loadings : numpy.ndarray
        (rank, n_peaks) float32, H.
    info : dict
        `fit_nmf`'s keys (backend 'minibatch', solver 'mu', n_iter: the passes started, converged: stopped by the rule
        before max_iter, reconstruction_err: the Frobenius norm of V - W H over all cells) and streamed (True), n_steps,
        block_cells, init_cells, forget_factor.
    """
    from .io.store import DEFAULT_BLOCK_CELLS

    block_cells = int(block_cells or DEFAULT_BLOCK_CELLS)
    batch_size = min(batch_size, block_cells)
    counts = _open_counts(counts)
    n_cells, n_peaks = counts.shape
    rank = check_rank(rank, n_cells, n_peaks)
    o = NMF_OPTIONS.resolve(options, where="nmf")
    transform, max_iter, init, solver, tol, backend = (o[k] for k in ("transform", "max_iter", "init", "solver", "tol", "backend"))
    if backend == "full":
        fail("backend", f"a store ({counts.path}) is factorized by MiniBatchNMF a block at a time: 'full' NMF needs "
                        "the matrix in memory; use backend 'auto' or 'minibatch', or read the store whole")
    if solver != "mu":
        fail("solver", "MiniBatchNMF, which factorizes a store, has multiplicative updates only: use solver 'mu'")
    started = time.perf_counter()
    data = StoredInput(counts, transform, block_cells=block_cells, progress=progress)
    rng = np.random.default_rng(seed)
    init_cells = STORE_NMF_INIT_CELLS if init_cells is None else int(init_cells)
    sample = np.sort(rng.choice(n_cells, size=min(n_cells, init_cells), replace=False))
    first = data.cells(sample)
    # partial_fit fixes its forgetting rho = forget_factor ** (batch / rows of its first call); fit's is
    # 0.7 ** (batch / n_cells): the factor below makes the first equal the second
    first_batch = min(batch_size, first.shape[0])
    forget_factor = MINIBATCH_FORGET_FACTOR ** (min(batch_size, n_cells) * first.shape[0] / (n_cells * first_batch))
    model = _reporting_minibatch_nmf(n_components=rank, init=init, batch_size=batch_size, tol=tol,
                                     forget_factor=forget_factor, max_no_improvement=MINIBATCH_MAX_NO_IMPROVEMENT,
                                     random_state=seed)
    rule = _MiniBatchConvergence(n_cells, tol)
    starts = np.arange(0, n_cells, block_cells)
    converged = False
    n_passes = 0

    def step(V) -> bool:
        before = model.components_.copy() if hasattr(model, "components_") else None
        model.partial_fit(V)
        if before is None:
            rule.steps += 1  # the init step, which the rule does not judge
            return False
        return rule.converged(V.shape[0], getattr(model, "batch_cost_", None), model.components_, before)

    with _progress_bar(progress, " blocks") as bar:
        step(first)
        del first
        for n_passes in range(1, max_iter + 1):
            bar.reset(total=len(starts))
            bar.set_description(f"NMF pass {n_passes}")
            order = np.random.default_rng([seed, n_passes])
            for start in starts[order.permutation(len(starts))]:
                block = data.rows(start, start + block_cells)
                shuffled = order.permutation(block.shape[0])
                # nearly equal mini-batches: a tail of a few cells would move H as much as a full batch
                for rows in np.array_split(shuffled, max(1, round(block.shape[0] / batch_size))):
                    if step(block[rows]):
                        converged = True
                        break
                bar.update(1)
                if converged:
                    break
            if converged:
                break
        H = np.asarray(model.components_, dtype=np.float64)
        W = np.empty((n_cells, rank), dtype=np.float32)
        squared = 0.0
        bar.reset(total=len(starts))
        bar.set_description("NMF cell factors")
        for start, V in data.blocks(block_cells):
            W_block = model.transform(V)
            W[start:start + V.shape[0]] = W_block
            squared += _squared_error(V, np.asarray(W_block, dtype=np.float64), H)
            bar.update(1)
    info_dict = {
        "backend": "minibatch",
        "streamed": True,
        "transform": transform,
        "rank": rank,
        "seed": seed,
        "init": init,
        "solver": "mu",
        "max_iter": max_iter,
        "tol": tol,
        "n_iter": n_passes,
        "n_steps": int(model.n_steps_),
        "converged": converged,
        "fit_s": time.perf_counter() - started,
        "reconstruction_err": math.sqrt(max(squared, 0.0)),
        "batch_size": batch_size,
        "block_cells": block_cells,
        "init_cells": int(len(sample)),
        "forget_factor": forget_factor,
        "graph_weight": 0.0,  # the graph term needs every cell's neighbours at hand: off from a store
        "graph_iter": 0,
        "graph_w_updates": 0,
        "graph_lambda": 0.0,
    }
    return W, H.astype(np.float32), info_dict


def fit_lsnmf_stored(counts, rank: int, seed: int = 0, *, block_cells: int | None = None, progress: bool = False,
                     **options):
    """LSNMF (Lin 2007) of a store's transformed counts, read a block of rows at a time: `fit_lsnmf`'s sparse solver.

    The solver touches V only through V H^T (n_cells x rank) and W^T V (rank x n_peaks), and each is one pass over the
    store's blocks: the first row-local, the second summed over the blocks. So the iterations are the in-memory sparse
    backend's, from the same random_vcol start (one pass), with the factors in memory (O((n_cells + n_peaks) x rank));
    only the order of the sums over cells differs, which moves the factors by rounding. Each iteration is two passes:
    max_iter iterations read the store about 2 x max_iter + 4 times (the weights, the start, the first gradients, the
    error).

    Parameters
    ----------
    counts : scatac.io.store.StoredCounts or str
        The store (cells x peaks), or its path.
    rank, seed
        As `fit_lsnmf` takes them.
    block_cells : int or None
        Cells read at a time (None: the store's DEFAULT_BLOCK_CELLS).
    progress : bool
        A tqdm bar over each pass's blocks.
    **options
        `LSNMF_OPTIONS`; backend must be 'auto' or 'sparse': nimfa works on a dense copy in memory. graph_weight is
        not used (the graph term needs every cell's neighbours at hand: off from a store).

    Returns
    -------
    cell_factors : numpy.ndarray
        (n_cells, rank) float32, W.
    loadings : numpy.ndarray
        (rank, n_peaks) float32, H.
    info : dict
        `fit_lsnmf`'s keys (backend 'sparse', n_iter, projected_gradient_norm, reconstruction_err over all cells) and
        streamed (True), passes (the reads of the whole store), block_cells.
    """
    from .io.store import DEFAULT_BLOCK_CELLS

    block_cells = int(block_cells or DEFAULT_BLOCK_CELLS)
    counts = _open_counts(counts)
    n_cells, n_peaks = counts.shape
    rank = check_rank(rank, n_cells, n_peaks)
    o = LSNMF_OPTIONS.resolve(options, where="lsnmf")
    transform, max_iter, backend = o["transform"], o["max_iter"], o["backend"]
    sub_iter, inner_sub_iter, beta, min_residuals = o["sub_iter"], o["inner_sub_iter"], o["beta"], o["min_residuals"]
    if backend == "nimfa":
        fail("backend", f"nimfa factorizes a dense copy of the matrix in memory; a store ({counts.path}) is factorized "
                        "by the sparse solver a block at a time: use backend 'auto' or 'sparse'")
    started = time.perf_counter()
    data = StoredInput(counts, transform, block_cells=block_cells, progress=progress)
    n_blocks = math.ceil(n_cells / block_cells)
    passes = 0
    with _progress_bar(progress, " blocks") as bar:

        def blocks(what: str):
            nonlocal passes
            passes += 1
            bar.reset(total=n_blocks)
            bar.set_description(f"LSNMF pass {passes}: {what}")
            for start, V in data.blocks(block_cells):
                yield start, V
                bar.update(1)

        # random_vcol_init's start: W's rows are row-local, H's a sum over the blocks
        pick_cols, pick_rows = _vcol_picks(n_cells, n_peaks, rank, seed)
        pick_rows = pick_rows.tocsc()
        W0 = np.empty((n_cells, rank))
        H0 = np.zeros((rank, n_peaks))
        for start, V in blocks("start"):
            Vd = V.astype(np.float64)
            W0[start:start + V.shape[0]] = (Vd @ pick_cols).toarray()
            H0 += (pick_rows[:, start:start + V.shape[0]] @ Vd).toarray()

        # the blocks are float32, as the in-memory input is: the products are taken in it, as _lsnmf_sparse's are
        def x_ht(H):
            Ht = H.T.astype(np.float32)
            out = np.empty((n_cells, rank))
            for start, V in blocks("V H^T"):
                out[start:start + V.shape[0]] = V @ Ht
            return out

        def wt_x(W):
            Wf = W.astype(np.float32)
            out = np.zeros((n_peaks, rank))
            for start, V in blocks("W^T V"):
                out += V.T @ Wf[start:start + V.shape[0]]
            return out.T

        W, H, details = _lsnmf_solve(x_ht, wt_x, W0, H0, max_iter, sub_iter, inner_sub_iter, beta, min_residuals)
        squared = 0.0
        for start, V in blocks("error"):
            squared += _squared_error(V, W[start:start + V.shape[0]], H)
    info_dict = {
        "backend": "sparse",
        "streamed": True,
        "transform": transform,
        "rank": rank,
        "seed": seed,
        "init": "random_vcol",
        "max_iter": max_iter,
        "sub_iter": sub_iter,
        "inner_sub_iter": inner_sub_iter,
        "beta": beta,
        "graph_weight": 0.0,  # the graph term needs every cell's neighbours at hand: off from a store
        "graph_lambda": 0.0,
        "fit_s": time.perf_counter() - started,
        "reconstruction_err": math.sqrt(max(squared, 0.0)),
        "passes": passes + (data.weights is not None),
        "block_cells": block_cells,
        **details,
    }
    return W.astype(np.float32), H.astype(np.float32), info_dict


def lsi_stored(counts, n_components: int, seed: int = 0, drop_first: bool = True, transform: str = "tfidf",
               unit_variance: bool = True, *, n_iter: int = LSI_POWER_ITERATIONS, n_oversamples: int = LSI_OVERSAMPLES,
               block_cells: int | None = None, progress: bool = False) -> np.ndarray:
    """`lsi` of a store's counts, read a block of rows at a time: a randomized SVD whose every product is a pass.

    Halko, Martinsson and Tropp (2011): a random Gaussian Z (n_peaks x l, l = the components + `n_oversamples`,
    default_rng(seed)) is orthonormalized; each of `n_iter` power iterations is one pass, Z <- QR(A^T (A Z)) with each
    block's rows A_b contributing A_b^T (A_b Z), so that Z converges to A's leading right singular vectors; a last pass
    gives Y = A Z (n_cells x l) and the small SVD Y = U S V^T gives the scores U S, A's projection on the right
    singular vectors Z V (what TruncatedSVD's fit_transform returns). Signs follow TruncatedSVD's rule (svd_flip,
    u_based_decision=False), so that both give the same sign where they find the same component. Power iterations and
    oversampling default to those of `lsi`'s TruncatedSVD. Memory: O((n_cells + n_peaks) x l) besides one block.

    Parameters
    ----------
    counts : scatac.io.store.StoredCounts or str
        The store (cells x peaks), or its path.
    n_components, seed, drop_first, transform, unit_variance
        As `lsi` takes them.
    n_iter : int
        Power iterations, one pass each.
    n_oversamples : int
        Extra random directions.
    block_cells : int or None
        Cells read at a time (None: the store's DEFAULT_BLOCK_CELLS).
    progress : bool
        A tqdm bar over the passes' blocks.

    Returns
    -------
    numpy.ndarray
        (n_cells, n_components) float32 scores, as `lsi` returns them.
    """
    from sklearn.utils.extmath import svd_flip

    from .io.store import DEFAULT_BLOCK_CELLS

    if transform not in LSI_TRANSFORMS:
        fail("transform", f"must be one of {', '.join(map(repr, LSI_TRANSFORMS))}, got {transform!r}")
    block_cells = int(block_cells or DEFAULT_BLOCK_CELLS)
    counts = _open_counts(counts)
    n_cells, n_peaks = counts.shape
    # idf's rows are L2-normalized in `lsi` (pp.idf); tfidf's are not (pp.tfidf(X, l2_normalize=False))
    data = StoredInput(counts, transform, l2_normalize=transform == "idf", block_cells=block_cells, progress=progress)
    k = n_components + (1 if drop_first else 0)
    k = min(k, min(n_cells, n_peaks) - 1)
    width = min(k + n_oversamples, n_cells, n_peaks)
    Z, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n_peaks, width)))
    n_blocks = math.ceil(n_cells / block_cells)
    with _progress_bar(progress, " blocks") as bar:
        for iteration in range(n_iter):
            bar.reset(total=n_blocks)
            bar.set_description(f"LSI power iteration {iteration + 1}/{n_iter}")
            gram = np.zeros((n_peaks, width))
            for _, A in data.blocks(block_cells):
                gram += A.T @ (A @ Z)
                bar.update(1)
            Z, _ = np.linalg.qr(gram)
        bar.reset(total=n_blocks)
        bar.set_description("LSI projection")
        Y = np.empty((n_cells, width))
        for start, A in data.blocks(block_cells):
            Y[start:start + A.shape[0]] = A @ Z
            bar.update(1)
    U, S, Vt = np.linalg.svd(Y, full_matrices=False)
    U, S, components = U[:, :k], S[:k], (Z @ Vt[:k].T).T  # components: (k, n_peaks), A's right singular vectors
    U, components = svd_flip(U, components, u_based_decision=False)
    scores = U * S
    if drop_first:
        scores = scores[:, 1:]
    if unit_variance:
        scores = scores / np.maximum(scores.std(axis=0, keepdims=True), 1e-12)
    return scores.astype(np.float32)


__all__ = ["fit_nmf", "fit_lsnmf", "lsi", "fit_nmf_stored", "fit_lsnmf_stored", "lsi_stored", "StoredInput",
           "factorization_input", "graph_regularized_updates", "neighbor_graph_parts", "random_vcol_init",
           "import_nimfa"]
