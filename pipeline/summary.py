"""The summary's rows, defined once: the schema, one batch's rows, and error counts.

No TensorFlow here: this module is tested on its own and read by the light commands.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa

SUMMARY_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("id", pa.string()),
        ("path", pa.string()),
        ("status", pa.string()),
        ("method", pa.string()),
        ("rank", pa.int32()),
        ("error", pa.string()),
        ("warning", pa.string()),
        ("label", pa.string()),
        ("label_index", pa.int32()),
        ("group", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("x0", pa.float64()),
        ("y0", pa.float64()),
        ("x1", pa.float64()),
        ("y1", pa.float64()),
        ("pred_index", pa.int32()),
        ("pred_label", pa.string()),
        ("pred_score", pa.float32()),
        ("topk_index", pa.list_(pa.int32())),
        ("topk_score", pa.list_(pa.float32())),
        ("target_index", pa.int32()),
        ("target_label", pa.string()),
        ("target_score", pa.float32()),
        ("correct", pa.bool_()),
        ("heatmap_path", pa.string()),
        ("overlay_path", pa.string()),
        ("guided_path", pa.string()),
        ("cam_max", pa.float32()),
        ("cam_mean", pa.float32()),
        ("cam_entropy", pa.float32()),
        ("peak_x", pa.float32()),
        ("peak_y", pa.float32()),
        ("centroid_x", pa.float32()),
        ("centroid_y", pa.float32()),
        ("spread", pa.float32()),
        ("coverage", pa.float32()),
        ("border_fraction", pa.float32()),
        ("energy_in_box", pa.float32()),
        ("pointing_hit", pa.bool_()),
        ("deletion_auc", pa.float32()),
        ("insertion_auc", pa.float32()),
        ("drop_in_confidence", pa.float32()),
        ("increase_in_confidence", pa.float32()),
        ("cluster", pa.int32()),  # strategy cluster within the class; filled by the report
    ]
)
DEFAULTS = {"cluster": -1}  # columns the batch loop leaves to later stages


def summary_table(columns: dict[str, list | np.ndarray]) -> pa.Table:
    """One batch of summary rows: a value list/array per schema column (missing -> nulls)."""
    n = len(next(iter(columns.values())))
    arrays = []
    for field in SUMMARY_SCHEMA:
        values = columns.get(field.name)
        if values is None and field.name in DEFAULTS:
            arrays.append(pa.array([DEFAULTS[field.name]] * n, type=field.type))
        elif values is None:
            arrays.append(pa.nulls(n, field.type))
        else:
            arrays.append(pa.array(values, type=field.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=SUMMARY_SCHEMA)


def error_kinds(errors: pd.Series, top: int = 5) -> list[tuple[str, int]]:
    """The commonest error messages, paths and details stripped: [(kind, count)]."""
    kinds = errors.dropna().map(lambda m: re.split(r"[:(]", m, maxsplit=1)[0].strip())
    return [(k, int(n)) for k, n in kinds.value_counts().head(top).items()]
