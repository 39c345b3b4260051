"""Attention strategies inside a class: spectral clustering of its maps (SpRAy), no TensorFlow.

Each map is area-pooled to a small fixed grid and L1-normalised; a sparse symmetric k-nearest-
neighbour graph joins similar maps; the leading eigenvalues of its normalised Laplacian give the
number of clusters (the eigengap) and its eigenvectors the embedding that k-means splits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy import linalg, sparse
from scipy.sparse.linalg import eigsh
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.neighbors import KDTree, NearestNeighbors
from threadpoolctl import threadpool_limits  # ships with scikit-learn

SHARPEN = 2.0  # maps are squared first, so their peaks, not their diffuse floor, set the shape
JOIN_COSINE = 0.9  # clusters whose mean features are this alike are one strategy
DENSE_UP_TO = 2000  # classes up to this many maps get a dense eigensolver (32 MB at most)
KNN_DIMS = 32  # features are reduced to this many principal components for the neighbour search


@dataclass
class ClassStrategies:
    """The clustering of one class's maps; per-row arrays are aligned with `rows`."""

    class_index: int
    rows: np.ndarray  # (n,) positions in the summary of the class's clustered rows
    labels: np.ndarray  # (n,) int32 cluster of each row, 0 = the largest
    eigenvalues: np.ndarray  # (m,) smallest eigenvalues of the normalised Laplacian, ascending
    embedding: np.ndarray  # (n,m) the matching eigenvectors (spectral embedding)
    n_clusters: int  # after clusters with the same mean map were joined
    eigengap: float  # lambda_{k+1} - lambda_k at the k the eigengap chose
    typicality: np.ndarray  # (n,) distance to the own cluster's centre (small: typical)
    radius: np.ndarray  # (k,) mean distance of a cluster's members to its centre
    separation: np.ndarray  # (k,) distance from a cluster's centre to the nearest other's
    mean_maps: np.ndarray  # (k,h,w) mean map of each cluster, at the maps' own resolution


def pool_matrix(size: int, grid: int) -> np.ndarray:
    """(grid, size) area weights: row g is the share of each source cell inside target cell g.

    Works both ways: a 7-cell axis spreads over 16 cells, a 224-cell axis sums into 16.
    """
    edges_src = np.arange(size + 1) / size  # (size+1,)
    edges_dst = np.arange(grid + 1) / grid  # (grid+1,)
    lo = np.maximum(edges_dst[:-1, None], edges_src[None, :-1])  # (grid,size)
    hi = np.minimum(edges_dst[1:, None], edges_src[None, 1:])
    overlap = np.clip(hi - lo, 0.0, None) * size  # share of each source cell
    return overlap.astype(np.float32)


def grid_features(maps: np.ndarray, grid: int) -> np.ndarray:
    """Maps (n,h,w) >= 0 -> (n, grid*grid) float32, area-pooled and L1-normalised.

    An all-zero map becomes the uniform distribution (it attends to nothing in particular).
    """
    maps = np.asarray(maps, np.float32) ** SHARPEN  # (n,h,w)
    n, h, w = maps.shape
    ry, rx = pool_matrix(h, grid), pool_matrix(w, grid)  # (g,h), (g,w)
    pooled = np.einsum("gh,nhw,kw->ngk", ry, maps, rx, optimize=True)  # (n,g,g)
    pooled = pooled.reshape(n, grid * grid)
    mass = pooled.sum(axis=1, keepdims=True)  # (n,1)
    uniform = np.full_like(pooled, 1.0 / (grid * grid))
    return np.where(mass > 0, pooled / np.where(mass > 0, mass, 1.0), uniform).astype(np.float32)


def knn_graph(features: np.ndarray, k: int, seed: int) -> sparse.csr_matrix:
    """Symmetric sparse affinity (n,n) with self-tuning Gaussian weights on the k-NN edges.

    w_ij = exp(-d_ij^2 / (s_i s_j)), s_i = distance to the i-th point's k-th neighbour
    (Zelnik-Manor & Perona 2004); an edge exists when either point lists the other.
    """
    n = len(features)
    k = min(k, n - 1)
    x = features
    with threadpool_limits(1, user_api="blas"):  # no spinning threads; same result anywhere
        if x.shape[1] > KNN_DIMS and n > KNN_DIMS:  # distances in few dimensions: a tree search
            x = PCA(KNN_DIMS, svd_solver="randomized", random_state=seed).fit_transform(x)
    # exact neighbours either way: the k-d tree when it prunes well on these features (a seeded
    # probe of 64 queries computes under n/32 distances each), else brute force (fixed cost)
    tree = KDTree(x)
    probe = np.random.default_rng(seed).choice(n, min(n, 64), replace=False)
    tree.query(x[probe], k=k + 1)
    if tree.get_n_calls() < len(probe) * n / 32:
        dist, idx = tree.query(x, k=k + 1)  # (n,k+1), nearest first
    else:
        dist, idx = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x).kneighbors(x)
    dist, idx = dist[:, 1:], idx[:, 1:]  # drop each point itself
    scale = np.maximum(dist[:, -1], 1e-12)  # (n,)
    weights = np.exp(-(dist**2) / (scale[:, None] * scale[idx]))
    rows = np.repeat(np.arange(n), k)
    graph = sparse.csr_matrix((weights.ravel(), (rows, idx.ravel())), shape=(n, n))
    return graph.maximum(graph.T).tocsr()


def spectrum(graph: sparse.csr_matrix, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The m smallest eigenvalues (ascending) of I - D^-1/2 W D^-1/2, and eigenvectors (n,m).

    Computed as the largest of D^-1/2 W D^-1/2: densely for small classes, else by ARPACK
    (it converges fast there) from a seeded start vector, so reruns agree.
    """
    n = graph.shape[0]
    degree = np.asarray(graph.sum(axis=1)).ravel()
    inv_sqrt = sparse.diags(1.0 / np.sqrt(np.maximum(degree, 1e-12)))
    normalised = (inv_sqrt @ graph @ inv_sqrt).tocsr()
    m = min(m, n - 1)
    if n <= DENSE_UP_TO:  # small classes: LAPACK's exact solver (ARPACK can miss a repeated 1)
        with threadpool_limits(1, user_api="blas"):
            values, vectors = linalg.eigh(normalised.toarray(), subset_by_index=[n - m, n - 1])
        order = np.argsort(-values)
        return np.clip(1.0 - values[order], 0.0, 2.0), vectors[:, order]
    v0 = np.random.default_rng(seed).uniform(0.5, 1.5, n)
    ncv = min(n, max(2 * m + 1, 32))  # a wider Krylov space: fewer restarts when the top
    # eigenvalues crowd near 1 (many loosely joined groups)
    with threadpool_limits(1, user_api="blas"):  # ARPACK's vector updates are memory-bound;
        # more BLAS threads only spin (5x slower on a busy 2-core machine), and vary the result
        values, vectors = eigsh(normalised, k=m, which="LA", v0=v0, tol=1e-8, ncv=ncv)
    order = np.argsort(-values)  # largest mu = smallest lambda first
    return np.clip(1.0 - values[order], 0.0, 2.0), vectors[:, order]


def choose_k(eigenvalues: np.ndarray, max_clusters: int) -> tuple[int, float]:
    """(k, gap): the k in [1, max_clusters] with the largest lambda_{k+1} - lambda_k."""
    gaps = np.diff(eigenvalues[: max_clusters + 1])  # gaps[k-1] = lambda_{k+1} - lambda_k
    if not len(gaps):
        return 1, 0.0
    k = int(np.argmax(gaps)) + 1
    return k, float(gaps[k - 1])


def cluster_maps(
    maps: np.ndarray, max_clusters: int, neighbors: int, grid: int, seed: int
) -> ClassStrategies:
    """Cluster one class's maps (n,h,w); `rows` and `class_index` are left for the caller."""
    features = grid_features(maps, grid)
    n = len(features)
    if n < 3:
        values, vectors, k, gap = np.zeros(1), np.zeros((n, 1)), 1, 0.0
    else:
        graph = knn_graph(features, neighbors, seed)
        values, vectors = spectrum(graph, max_clusters + 1, seed)
        k, gap = choose_k(values, max_clusters)
    labels = np.zeros(n, np.int32)
    if k > 1:  # Ng-Jordan-Weiss: rows of the k leading eigenvectors, normalised to unit length
        lead = vectors[:, :k] / np.maximum(np.linalg.norm(vectors[:, :k], axis=1)[:, None], 1e-12)
        with threadpool_limits(1, user_api="blas"):  # the same result on any number of cores
            labels = KMeans(k, n_init=10, random_state=seed).fit_predict(lead).astype(np.int32)
    labels = join_alike(_by_size(labels), features)
    return describe(labels, features, maps, values, vectors, gap)


def join_alike(labels: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Join clusters whose mean features have cosine similarity >= JOIN_COSINE: one strategy
    that the k-NN graph cut in two (e.g. a tag seen on dark and on light backgrounds)."""
    k = int(labels.max()) + 1
    centres = np.stack([features[labels == c].mean(axis=0) for c in range(k)])  # (k,d)
    unit = centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    parent = np.arange(k)
    for i, j in zip(*np.nonzero(np.triu(unit @ unit.T, 1) >= JOIN_COSINE)):
        parent[parent == parent[j]] = parent[i]  # union: relabel j's group as i's
    return _by_size(parent[labels])


def describe(
    labels: np.ndarray,
    features: np.ndarray,
    maps: np.ndarray,
    values: np.ndarray,
    vectors: np.ndarray,
    gap: float,
) -> ClassStrategies:
    """Per-cluster geometry (centres, radii, separation) and mean maps of a labelling."""
    k = int(labels.max()) + 1
    centres = np.stack([features[labels == c].mean(axis=0) for c in range(k)])  # (k,d)
    typicality = np.linalg.norm(features - centres[labels], axis=1).astype(np.float32)  # (n,)
    radius = np.array([typicality[labels == c].mean() for c in range(k)], np.float32)
    between = np.linalg.norm(centres[:, None] - centres[None], axis=2)  # (k,k)
    np.fill_diagonal(between, np.inf)
    separation = between.min(axis=1) if k > 1 else np.full(1, np.inf)
    mean_maps = np.stack([maps[labels == c].mean(axis=0) for c in range(k)]).astype(np.float32)
    return ClassStrategies(
        -1,
        np.arange(len(labels)),
        labels,
        values,
        vectors,
        k,
        gap,
        typicality,
        radius,
        separation.astype(np.float32),
        mean_maps,
    )


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters 0.. by size (largest first), ties by their first member."""
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (-counts[i], first[i]))
    mapping = np.empty(ids.max() + 1, np.int32)
    mapping[ids[order]] = np.arange(len(ids), dtype=np.int32)
    return mapping[labels]


def cluster_classes(
    keys: np.ndarray,
    load_maps: Callable[[np.ndarray], np.ndarray],
    min_class_n: int,
    max_clusters: int,
    neighbors: int,
    grid: int,
    seed: int,
) -> list[ClassStrategies]:
    """Cluster every class with at least min_class_n rows.

    keys (N,) int: each summary row's class, -1 for rows left out (errors, no map);
    load_maps(positions) -> (n,h,w) maps of those summary rows.
    """
    found = []
    for cls in np.unique(keys[keys >= 0]):
        rows = np.flatnonzero(keys == cls)
        if len(rows) < max(min_class_n, 3):
            continue
        result = cluster_maps(load_maps(rows), max_clusters, neighbors, grid, seed)
        found.append(replace(result, class_index=int(cls), rows=rows))
    return found
