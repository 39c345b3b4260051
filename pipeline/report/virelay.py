"""Export the attention strategies as a ViRelAy project (the SpRAy authors' viewer); no TensorFlow.

`virelay <folder>/project.yaml` opens it (extra `[virelay]`). Layout, as virelay.model reads it:

- `project.yaml`: name, model, `label_map`, `dataset` (type hdf5), `attributions` (method,
  strategy, sources) and `analyses` (method, sources); paths relative to the file.
- `label-map.json`: `[{index, word_net_id, name}]`; `word_net_id` `class_<index>` also names the
  class's analysis category.
- `dataset.h5`: `data` (N,H,W,3) uint8 images resized to the input size, `label` (N,) true class
  (-1: none); plus `row` (N,) summary positions and `id` (N,), which ViRelAy ignores.
- `attributions.h5`: `attribution` (N,h,w,1) float32 maps, `prediction` (N,C) the recorded top-k
  scores (0 elsewhere), `label` (N,); attribution i belongs to sample i.
- `analysis.h5`: a group per class, `class_<k>`: `index` (n,) sample indices, `cluster/eigengap`
  (n,) the cluster labels (attr `k`), `embedding/spectral-2d` (n,2) the first two non-trivial
  eigenvectors (the viewer's default plot) and `embedding/spectral` (n,m), both with the
  eigenvalues as attr `eigenvalue` (m,).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import yaml
from PIL import Image, ImageOps

from pipeline.errors import ConfigError
from pipeline.outputs import atomic_write
from pipeline.report.strategies import ClassStrategies

log = logging.getLogger(__name__)

BATCH = 64  # images / maps read per step while writing the HDF5 files
METHOD = "spray"  # the analysis method's name (part of the viewer's URLs)
CLUSTERING = "eigengap"  # the one clustering per category: k chosen by the eigengap
NO_LABEL = -1  # `label` of rows without a usable true label


def export_virelay(
    folder: Path,
    summary: pd.DataFrame,
    load_maps: Callable[[np.ndarray], np.ndarray],
    image_path: Callable[[int], Path],
    strategies: list[ClassStrategies],
    names: dict[int, str],
    input_size: tuple[int, int],
    *,
    project: str | None = None,
    model: str = "Keras classifier",
    method: str = "Grad-CAM",
) -> Path:
    """Write a ViRelAy project of the clustered rows into `folder`; returns the project file."""
    h5py = _require_h5py()
    if not strategies:
        raise ValueError("no class has attention strategies to export to ViRelAy")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    positions = np.unique(np.concatenate([s.rows for s in strategies])).astype(np.int64)  # (N,)
    rows = summary.iloc[positions]
    labels = _int_column(rows, "label_index")  # (N,)
    log.info(
        "ViRelAy export: %d images of %d classes -> %s", len(positions), len(strategies), folder
    )
    label_map = _label_map(names, labels, rows)
    _write_json(folder / "label-map.json", label_map)
    _write_dataset(h5py, folder / "dataset.h5", positions, rows, labels, image_path, input_size)
    predictions = _predictions(rows, 1 + max(entry["index"] for entry in label_map))
    _write_attributions(h5py, folder / "attributions.h5", positions, load_maps, predictions, labels)
    _write_analysis(h5py, folder / "analysis.h5", positions, strategies)
    spec = {
        "project": {
            "name": project or f"gradcam-audit {folder.resolve().parent.name}",
            "model": model,
            "label_map": "label-map.json",
            "dataset": {"name": "audited images", "type": "hdf5", "path": "dataset.h5"},
            "attributions": {
                "attribution_method": method,
                "attribution_strategy": _attribution_strategy(rows),
                "sources": ["attributions.h5"],
            },
            "analyses": [{"analysis_method": METHOD, "sources": ["analysis.h5"]}],
        }
    }
    path = folder / "project.yaml"  # last: it names the other files, which now exist whole
    atomic_write(path, lambda tmp: Path(tmp).write_text(yaml.safe_dump(spec, sort_keys=False)))
    return path


def _require_h5py() -> ModuleType:
    """h5py, or a ConfigError that says how to install it."""
    try:
        import h5py  # here, not at the top: h5py comes with the optional extra [virelay]
    except ImportError as e:
        raise ConfigError(
            "strategies.virelay=true needs the optional extra: pip install 'gradcam-audit[virelay]'"
        ) from e
    return h5py


def category(class_index: int) -> str:
    """The label map's `word_net_id` of a class, which names its analysis category too."""
    return "unlabelled" if class_index == NO_LABEL else f"class_{class_index}"


def _int_column(rows: pd.DataFrame, column: str) -> np.ndarray:
    """(N,) int64 of a nullable integer column; missing values become NO_LABEL."""
    if column not in rows:
        return np.full(len(rows), NO_LABEL, np.int64)
    values = pd.to_numeric(rows[column], errors="coerce")
    return values.fillna(NO_LABEL).to_numpy(np.int64)


def _label_map(names: dict[int, str], labels: np.ndarray, rows: pd.DataFrame) -> list[dict]:
    """Every class named, plus any index the exported rows use (ViRelAy looks each one up)."""
    used = {int(i) for i in labels} | set(_int_column(rows, "pred_index").tolist())
    used.discard(NO_LABEL)
    entries = [
        {"index": int(i), "word_net_id": category(int(i)), "name": names.get(i, f"class {i}")}
        for i in sorted(set(names) | used)
    ]
    if (labels == NO_LABEL).any():
        entries.append({"index": NO_LABEL, "word_net_id": category(NO_LABEL), "name": "(no label)"})
    return entries


def _write_json(path: Path, value: object) -> None:
    """`value` as indented JSON, atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=1)))


def load_image(path: Path, input_size: tuple[int, int]) -> np.ndarray:
    """The image as displayed (EXIF applied), RGB, resized bilinearly: (H,W,3) uint8."""
    height, width = input_size
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        return np.asarray(image.resize((width, height), Image.BILINEAR), np.uint8)


def _write_dataset(
    h5py: ModuleType,
    path: Path,
    positions: np.ndarray,
    rows: pd.DataFrame,
    labels: np.ndarray,
    image_path: Callable[[int], Path],
    input_size: tuple[int, int],
) -> None:
    """dataset.h5: the images (N,H,W,3) uint8 and their true labels (N,)."""
    shape = (len(positions), *input_size, 3)  # (N,H,W,3)
    ids = rows["id"].astype(str).tolist() if "id" in rows else [str(p) for p in positions]

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            data = f.create_dataset(
                "data", shape, np.uint8, chunks=(1, *shape[1:]), compression="gzip"
            )
            for start, images in _image_batches(positions, image_path, input_size):
                data[start : start + len(images)] = images
            f.create_dataset("label", data=labels)
            f.create_dataset("row", data=positions)
            f.create_dataset("id", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())

    atomic_write(path, write)


def _image_batches(
    positions: np.ndarray, image_path: Callable[[int], Path], input_size: tuple[int, int]
) -> Iterator[tuple[int, np.ndarray]]:
    """(start, images (b,H,W,3) uint8) of the rows' images, BATCH rows at a time."""
    for start in range(0, len(positions), BATCH):
        batch = positions[start : start + BATCH]
        yield start, np.stack([_image(image_path, p, input_size) for p in batch])


def _image(
    image_path: Callable[[int], Path], position: int, input_size: tuple[int, int]
) -> np.ndarray:
    """One row's image (H,W,3) uint8; a black image, with a warning, if it can no longer be read."""
    path = image_path(int(position))
    try:
        return load_image(path, input_size)
    except (OSError, ValueError) as e:
        log.warning("ViRelAy export: %s could not be read (%s); a black image stands in", path, e)
        return np.zeros((*input_size, 3), np.uint8)


def _predictions(rows: pd.DataFrame, n_classes: int) -> np.ndarray:
    """(N,C) float32: the top-k scores the summary recorded (else the top one), 0 elsewhere."""
    out = np.zeros((len(rows), n_classes), np.float32)
    has_topk = "topk_index" in rows and "topk_score" in rows
    for i, row in enumerate(rows.itertuples(index=False)):
        listed = has_topk and isinstance(row.topk_index, (list, tuple, np.ndarray))
        indices = list(row.topk_index) if listed else []
        scores = list(row.topk_score) if indices else []
        if not indices and pd.notna(getattr(row, "pred_index", None)):
            indices, scores = [row.pred_index], [getattr(row, "pred_score", 1.0)]
        for k, score in zip(indices, scores):
            if 0 <= int(k) < n_classes and pd.notna(score):
                out[i, int(k)] = score
    return out


def _write_attributions(
    h5py: ModuleType,
    path: Path,
    positions: np.ndarray,
    load_maps: Callable[[np.ndarray], np.ndarray],
    predictions: np.ndarray,
    labels: np.ndarray,
) -> None:
    """attributions.h5: the maps (N,h,w,1) float32, aligned with dataset.h5's samples."""

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            attribution = None
            for start in range(0, len(positions), BATCH):
                batch = positions[start : start + BATCH]
                maps = np.asarray(load_maps(batch), np.float32)  # (k,h,w)
                if attribution is None:  # a channel axis: ViRelAy takes 3-D attributions
                    shape = (len(positions), *maps.shape[1:], 1)
                    chunks = (1, *shape[1:])
                    attribution = f.create_dataset(
                        "attribution", shape, np.float32, chunks=chunks, compression="gzip"
                    )
                attribution[start : start + len(maps)] = maps[..., None]
            f.create_dataset("prediction", data=predictions)
            f.create_dataset("label", data=labels)

    atomic_write(path, write)


def _write_analysis(
    h5py: ModuleType, path: Path, positions: np.ndarray, strategies: list[ClassStrategies]
) -> None:
    """analysis.h5: per class its sample indices, cluster labels and spectral embeddings."""

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            for s in strategies:
                group = f.create_group(category(s.class_index))
                group.create_dataset("index", data=np.searchsorted(positions, s.rows))  # (n,)
                cluster = group.create_group("cluster")
                labels = cluster.create_dataset(CLUSTERING, data=np.asarray(s.labels, np.int32))
                labels.attrs["k"] = s.n_clusters
                labels.attrs["eigengap"] = s.eigengap
                embedding = group.create_group("embedding", track_order=True)  # 2-D listed first
                embeddings = {"spectral-2d": plane(s.embedding), "spectral": s.embedding}
                for name, vectors in embeddings.items():
                    dataset = embedding.create_dataset(name, data=np.asarray(vectors, np.float64))
                    dataset.attrs["eigenvalue"] = np.asarray(s.eigenvalues, np.float64)

    atomic_write(path, write)


def plane(embedding: np.ndarray) -> np.ndarray:
    """(n,2): eigenvectors 2 and 3 (the first only follows the node degrees); 0 where absent."""
    out = np.zeros((len(embedding), 2))
    part = np.asarray(embedding)[:, 1:3]
    out[:, : part.shape[1]] = part
    return out


def _attribution_strategy(rows: pd.DataFrame) -> str:
    """ViRelAy's name for what the maps explain: `true_label` only if every target is the label."""
    targets = _int_column(rows, "target_index")
    explains_label = np.array_equal(targets, _int_column(rows, "label_index"))
    explains_pred = np.array_equal(targets, _int_column(rows, "pred_index"))
    return "true_label" if explains_label and not explains_pred else "predicted_label"
