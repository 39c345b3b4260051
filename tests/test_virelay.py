"""The ViRelAy export: written here, opened with ViRelAy's own project loader and its server."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.report.strategies import ClassStrategies
from pipeline.report.virelay import export_virelay

NAMES = {0: "cat", 1: "dog", 2: "bird"}
INPUT = (24, 32)  # (height, width): not square, so a swapped axis shows
MAP = (6, 5)  # map (h,w), not square either
N = 10  # summary rows; row 5 is an error row, clustered in no class


def _case(tmp_path: Path):
    """Images on disk, a summary, maps and two classes' strategies, all made up."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N):  # varied sizes and modes, as a manifest would have them
        pixels = rng.integers(0, 256, (20 + 3 * i, 30 + 2 * i, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert("L" if i == 4 else "RGB")
        paths.append(tmp_path / f"img{i}.png")
        image.save(paths[-1])
    pred = [0, 2, 0, 2, 0, 1, 0, 2, 0, 2]
    summary = pd.DataFrame(
        {
            "id": [f"im-{i}" for i in range(N)],
            "status": ["ok"] * 5 + ["error"] + ["ok"] * 4,
            "label_index": pd.array([0, 2, 0, None, 1, None, 0, 2, 0, 2], dtype="Int32"),
            "pred_index": pred,
            "pred_score": rng.random(N).astype(np.float32),
            "target_index": pred,
        }
    )
    maps = rng.random((N, *MAP)).astype(np.float32)  # (N,h,w)
    strategies = [
        ClassStrategies(
            class_index=0,
            rows=np.array([0, 2, 4, 6, 8]),
            labels=np.array([0, 0, 1, 0, 1], np.int32),
            eigenvalues=np.array([0.0, 0.1, 0.7, 0.9]),
            embedding=rng.normal(size=(5, 4)),
            n_clusters=2,
            eigengap=0.6,
            typicality=rng.random(5).astype(np.float32),
            radius=np.ones(2, np.float32),
            separation=np.ones(2, np.float32),
            mean_maps=np.zeros((2, 4, 4), np.float32),
        ),
        ClassStrategies(  # rows out of order: the export must keep each row with its own data
            class_index=2,
            rows=np.array([9, 1, 7, 3]),
            labels=np.array([0, 1, 0, 2], np.int32),
            eigenvalues=np.array([0.0, 0.2, 0.3]),
            embedding=rng.normal(size=(4, 3)),
            n_clusters=3,
            eigengap=0.5,
            typicality=rng.random(4).astype(np.float32),
            radius=np.ones(3, np.float32),
            separation=np.ones(3, np.float32),
            mean_maps=np.zeros((3, 4, 4), np.float32),
        ),
    ]
    return summary, maps, paths, strategies


def _export(tmp_path: Path) -> tuple[Path, pd.DataFrame, np.ndarray, list, list[ClassStrategies]]:
    summary, maps, paths, strategies = _case(tmp_path)
    project = export_virelay(
        tmp_path / "out" / "virelay",
        summary,
        load_maps=lambda positions: maps[positions],
        image_path=lambda position: paths[position],
        strategies=strategies,
        names=NAMES,
        input_size=INPUT,
        project="audit",
    )
    return project, summary, maps, paths, strategies


def _expected_image(path: Path) -> np.ndarray:
    """The image as the viewer should show it: RGB at the input size, (H,W,3) uint8."""
    image = Image.open(path).convert("RGB").resize(INPUT[::-1], Image.BILINEAR)
    return np.asarray(image)


def test_virelay_opens_the_export(tmp_path):
    pytest.importorskip("virelay")
    from virelay.model import Workspace

    project_file, summary, maps, paths, strategies = _export(tmp_path)
    workspace = Workspace()
    workspace.add_project(str(project_file))
    try:
        project = workspace.get_project("audit")
        assert project.get_analysis_methods() == ["spray"]
        categories = project.get_analysis_categories("spray")
        assert [(c.name, c.human_readable_name) for c in categories] == [
            ("class_0", "cat"),
            ("class_2", "bird"),
        ]
        assert project.get_analysis_clustering_names("spray") == ["eigengap"]
        assert project.get_analysis_embedding_names("spray") == ["spectral-2d", "spectral"]
        assert len(project.dataset) == N - 1  # the error row is in no class
        for s in strategies:
            _check_class(project, s, summary, maps, paths)
    finally:
        workspace.close()


def _check_class(project, s: ClassStrategies, summary, maps, paths) -> None:
    """One category: labels, eigenvalues, embeddings exact; each point's own image and map."""
    name = f"class_{s.class_index}"
    full = project.get_analysis("spray", name, "eigengap", "spectral")
    np.testing.assert_array_equal(full.clustering, s.labels)
    np.testing.assert_allclose(full.eigenvalues, s.eigenvalues)
    np.testing.assert_allclose(full.embedding, s.embedding)
    flat = project.get_analysis("spray", name, "eigengap", "spectral-2d")
    np.testing.assert_array_equal(flat.clustering, s.labels)
    np.testing.assert_allclose(flat.embedding, s.embedding[:, 1:3])
    for row, index in zip(s.rows, full.attribution_indices):
        sample = project.get_sample(int(index))
        np.testing.assert_array_equal(sample.data, _expected_image(paths[row]))
        label = summary["label_index"][row]
        assert sample.labels[0].name == ("(no label)" if pd.isna(label) else NAMES[label])
        attribution = project.get_attribution(int(index))
        assert attribution.index == index
        assert attribution.data.shape == (*MAP, 1)
        np.testing.assert_array_equal(attribution.data[..., 0], maps[row])
        assert attribution.prediction.argmax() == summary["pred_index"][row]


def test_virelay_server_serves_the_export(tmp_path):
    pytest.importorskip("flask")
    pytest.importorskip("virelay")
    from virelay.model import Workspace
    from virelay.server import Server

    project_file, _, _, _, strategies = _export(tmp_path)
    workspace = Workspace()
    workspace.add_project(str(project_file))
    try:
        client = Server(workspace).app.test_client()
        s = strategies[1]
        query = "category=class_2&clustering=eigengap&embedding=spectral-2d"
        answer = client.get(f"/api/projects/0/analyses/spray?{query}")
        assert answer.status_code == 200, answer.text
        points = answer.json["embedding"]
        assert [p["cluster"] for p in points] == s.labels.tolist()
        np.testing.assert_allclose(answer.json["eigenvalues"], s.eigenvalues)
        index = points[0]["attributionIndex"]
        heatmap = client.get(f"/api/projects/0/attributions/{index}/heatmap?superimpose=true")
        assert heatmap.status_code == 200, heatmap.text
        assert heatmap.mimetype.startswith("image/")
    finally:
        workspace.close()


def test_without_h5py_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'gradcam-audit\[virelay\]'"):
        _export(tmp_path)
    assert not (tmp_path / "out").exists()
