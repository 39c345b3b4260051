"""Strategy clustering: features, graph, spectrum and clusters against independent references."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy import sparse

from pipeline.config import ReportConfig, StrategiesConfig
from pipeline.outputs import save_heatmap
from pipeline.report import build_audit
from pipeline.report.aggregate import grid_cell, spot_share
from pipeline.report.strategies import SHARPEN as P
from pipeline.report.strategies import (
    choose_k,
    cluster_maps,
    grid_features,
    knn_graph,
    pool_matrix,
    spectrum,
)
from pipeline.summary import summary_table


def blob(cx: float, cy: float, side: int = 14, width: float = 0.08) -> np.ndarray:
    """A Gaussian map (side,side) centred at (cx, cy) in [0,1] coordinates, max 1."""
    ys, xs = (np.mgrid[:side, :side] + 0.5) / side
    m = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * width**2))
    return (m / m.max()).astype(np.float32)


def three_strategies(n: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Maps of three strategies (top-left corner, centre, bottom-right), a little jitter."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % 3
    centres = [(0.1, 0.1), (0.5, 0.5), (0.9, 0.85)]
    maps = (
        np.stack([blob(*(np.array(centres[t]) + rng.normal(0, 0.015, 2))) for t in truth])
        + rng.random((n, 14, 14)).astype(np.float32) * 0.02
    )
    return maps / maps.max(axis=(1, 2), keepdims=True), truth


def test_grid_features_equal_area_pooling_done_by_hand():
    rng = np.random.default_rng(1)
    maps = rng.random((3, 7, 10)).astype(np.float32)
    got = grid_features(maps, 5)
    for m, row in zip(maps, got):
        # independent: upsample each cell to a fine 70x50 raster, average 14x10 blocks
        fine = np.kron(m**P, np.ones((10, 5)))  # (70,50): each cell becomes 10x5 pixels
        pooled = fine.reshape(5, 14, 5, 10).mean(axis=(1, 3))
        np.testing.assert_allclose(row, (pooled / pooled.sum()).ravel(), rtol=1e-5, atol=1e-7)
    assert np.allclose(got.sum(axis=1), 1.0)
    zero = grid_features(np.zeros((1, 4, 4)), 4)
    np.testing.assert_allclose(zero, np.full((1, 16), 1 / 16))
    np.testing.assert_allclose(pool_matrix(7, 16).sum(axis=0), 1.0, rtol=1e-6)  # mass kept


def test_knn_graph_is_sparse_symmetric_and_joins_true_neighbours():
    maps, truth = three_strategies(60)
    features = grid_features(maps, 12)
    graph = knn_graph(features, 5, seed=0)
    assert sparse.issparse(graph) and graph.shape == (60, 60)
    assert (abs(graph - graph.T)).max() < 1e-12
    assert graph.nnz <= 2 * 5 * 60 and graph.diagonal().max() == 0
    rows, cols = graph.nonzero()
    assert (truth[rows] == truth[cols]).mean() > 0.95  # edges stay inside strategies


def test_spectrum_matches_dense_reference_and_eigengap_counts_strategies():
    maps, _ = three_strategies(60)
    graph = knn_graph(grid_features(maps, 12), 5, seed=0)
    values, vectors = spectrum(graph, 5, seed=0)
    dense = graph.toarray()
    d = dense.sum(axis=1)
    lap = np.eye(60) - dense / np.sqrt(np.outer(d, d))
    reference = np.linalg.eigvalsh(lap)[:5]  # independent: numpy's dense solver
    np.testing.assert_allclose(values, reference, atol=1e-8)
    assert vectors.shape == (60, 5)
    np.testing.assert_allclose(lap @ vectors, vectors * values, atol=1e-6)
    assert choose_k(values, 4)[0] == 3  # three near-zero eigenvalues, then a jump
    assert choose_k(np.array([0.0, 0.5, 0.55, 0.6]), 3) == (1, 0.5)
    assert choose_k(np.array([0.0, 0.01, 0.5, 0.52, 0.99]), 2) == (2, 0.49)  # k <= max_clusters


def test_clusters_recover_strategies_numbered_by_size_and_deterministic():
    maps, truth = three_strategies(90)
    maps = np.concatenate([maps, maps[truth == 1][:12]])  # the centre strategy is largest
    truth = np.concatenate([truth, np.ones(12, int)])
    first = cluster_maps(maps, 8, 10, 12, seed=3)
    again = cluster_maps(maps, 8, 10, 12, seed=3)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert first.n_clusters == 3
    assert pd.crosstab(first.labels, truth).gt(0).sum(axis=1).eq(1).all()  # pure clusters
    assert (first.labels[truth == 1] == 0).all()  # the largest strategy is cluster 0
    assert np.bincount(first.labels).tolist() == sorted(np.bincount(first.labels), reverse=True)
    for c in range(3):  # mean maps and typicality belong to their clusters
        np.testing.assert_allclose(first.mean_maps[c], maps[first.labels == c].mean(0), atol=1e-6)
    assert first.typicality.shape == (102,) and (first.radius < first.separation).all()


def test_one_strategy_with_two_looks_is_joined():
    """A tag seen on dark and on light backgrounds: two tight groups with the same mean map."""
    maps, _ = three_strategies(60)
    rng = np.random.default_rng(5)
    tag = blob(0.9, 0.1, width=0.05)
    looks = [tag * 0.9 + 0.02, tag + rng.random((14, 14)) * 0.05]
    extra = np.stack([looks[i % 2] for i in range(24)])
    result = cluster_maps(np.concatenate([maps, extra]), 8, 5, 12, seed=0)
    tagged = result.labels[60:]
    assert len(set(tagged)) == 1 and not np.isin(tagged, result.labels[:60]).any()


def test_spot_share_and_grid_cell():
    assert grid_cell(pd.Series((np.arange(7) + 0.5) / 7)) == pytest.approx(1 / 7)
    assert grid_cell(pd.Series([1.5 / 16, 14.5 / 16])) == pytest.approx(1 / 16)
    cells = pd.DataFrame({"x": [3, 4, 5, 3, 9, 4], "y": [3, 3, 5, 4, 9, 4]})
    assert spot_share(cells) == pytest.approx(5 / 6)  # a 3x3 window holds all but (9, 9)
    assert np.isnan(spot_share(cells.iloc[:0]))


# ----------------------------------------------------------------------------- stage


def write_run(out, maps: np.ndarray, classes: np.ndarray, errors: int = 2):
    """A finished run of the given maps (one row each) plus error rows, no boxes."""
    rows = []
    for i, (m, cls) in enumerate(zip(maps, classes)):
        rel = f"heatmaps/{i:05d}.npy"
        save_heatmap(out / rel, m)
        peak = np.unravel_index(np.argmax(m), m.shape)
        rows.append(
            {
                "row": i,
                "id": f"img{i}",
                "path": f"img{i}.png",
                "status": "ok",
                "label": str(cls),
                "label_index": int(cls),
                "pred_index": int(cls),
                "pred_score": 0.9,
                "target_index": int(cls),
                "correct": True,
                "heatmap_path": rel,
                "cam_max": 1.0,
                "peak_x": (peak[1] + 0.5) / m.shape[1],
                "peak_y": (peak[0] + 0.5) / m.shape[0],
                "centroid_x": 0.5,
                "centroid_y": 0.5,
                "border_fraction": 0.2,
                "cam_entropy": 0.5,
                "coverage": 0.2,
            }
        )
    for j in range(errors):
        rows.append({"row": len(maps) + j, "id": f"bad{j}", "status": "error", "error": "x"})
    frame = pd.DataFrame(rows)
    table = summary_table({c: frame[c].tolist() for c in frame.columns})
    pq.write_table(table, out / "summary.parquet")
    (out / "run.json").write_text(json.dumps({"model": {"input_size": [14, 14]}}))


def test_stage_writes_cluster_column_and_clusters_table(tmp_path):
    maps, truth = three_strategies(60)
    small, _ = three_strategies(8, seed=1)
    classes = np.concatenate([np.zeros(60, int), np.ones(8, int)])  # class 1: below min_class_n
    write_run(tmp_path, np.concatenate([maps, small]), classes)
    before = pq.read_table(tmp_path / "summary.parquet")
    assert before.column("cluster").to_pylist() == [-1] * 70  # the run leaves -1
    audit = build_audit(tmp_path, ReportConfig(), StrategiesConfig(min_class_n=20), seed=0)
    summary = pq.read_table(tmp_path / "summary.parquet")
    assert summary.schema.field("cluster").type == "int32" and summary.num_rows == 70
    cluster = np.array(summary.column("cluster").to_pylist())
    assert (cluster[60:] == -1).all()  # class 1 too small, error rows: none
    assert pd.crosstab(cluster[:60], truth).gt(0).sum(axis=1).eq(1).all()
    clusters = pd.read_parquet(tmp_path / "clusters.parquet")
    assert clusters["class_index"].tolist() == [0, 0, 0] and clusters["n"].sum() == 60
    np.testing.assert_allclose(clusters["share"], clusters["n"] / 60)
    for _, c in clusters.iterrows():
        members = np.flatnonzero(cluster == c["cluster"])
        expected = np.mean([maps[i] for i in members], axis=0)
        np.testing.assert_allclose(np.load(tmp_path / c["mean_map_path"]), expected, atol=1e-5)
        assert (tmp_path / c["mean_map_png"]).is_file()
        assert set(c["examples"]) <= {f"img{i}" for i in members}
        assert len(c["examples"]) == min(6, c["n"])
    classes_table = audit.classes.set_index("class_index")
    assert classes_table.loc[0, "n_clusters"] == 3 and classes_table.loc[1, "n_clusters"] == 0
    assert classes_table.loc[0, "eigengap"] > 0 and np.isnan(classes_table.loc[1, "eigengap"])
    # rerun: the same clusters (determinism for a fixed seed)
    build_audit(tmp_path, ReportConfig(), StrategiesConfig(min_class_n=20), seed=0)
    again = pq.read_table(tmp_path / "summary.parquet").column("cluster").to_pylist()
    assert again == cluster.tolist()
    off = build_audit(tmp_path, ReportConfig(), StrategiesConfig(enabled=False), seed=0)
    assert off.strategies.clusters.empty
    assert set(pq.read_table(tmp_path / "summary.parquet").column("cluster").to_pylist()) == {-1}


def test_unlabelled_topk_missing_and_duplicate_rows(tmp_path):
    """No labels at all, runner-up rows of target=topk, a missing map file, and 15 copies of one
    image: clustering still runs, those rows get -1, and the copies raise no flag."""
    maps, truth = three_strategies(60)
    copies = np.repeat(blob(0.3, 0.4)[None], 15, axis=0)  # duplicate images: identical maps
    write_run(tmp_path, np.concatenate([maps, copies]), np.zeros(75, int))
    summary = pq.read_table(tmp_path / "summary.parquet").to_pandas()
    summary[["label", "label_index", "correct"]] = None  # a path-only manifest
    summary.loc[5, "rank"] = 1  # a runner-up map (target=topk)
    summary.loc[7, "heatmap_path"] = "heatmaps/gone.npy"
    table = summary_table({c: summary[c].tolist() for c in summary.columns})
    pq.write_table(table, tmp_path / "summary.parquet")
    audit = build_audit(tmp_path, ReportConfig(), StrategiesConfig(), seed=0)
    cluster = pq.read_table(tmp_path / "summary.parquet").column("cluster").to_pylist()
    assert cluster[5] == -1 and cluster[7] == -1 and cluster[75:] == [-1, -1]
    assert sum(c >= 0 for c in cluster) == 73
    clusters = audit.strategies.clusters
    assert clusters["cluster"].dtype == "int32" and not clusters["flagged"].any()
    assert not audit.classes["flagged"].any()


def test_all_rows_failed_gives_empty_tables(tmp_path):
    write_run(tmp_path, np.zeros((0, 14, 14), np.float32), np.zeros(0, int), errors=3)
    audit = build_audit(tmp_path, ReportConfig(), StrategiesConfig(), seed=0)
    clusters = pd.read_parquet(tmp_path / "clusters.parquet")
    assert clusters.empty and {"class_index", "cluster", "flagged", "examples"} <= set(clusters)
    assert pq.read_table(tmp_path / "summary.parquet").column("cluster").to_pylist() == [-1] * 3
    assert audit.classes.empty or not audit.classes["flagged"].any()
