"""Class- and group-level bias audit from a run's summary and maps (no TensorFlow needed)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.config import ConfigError, ReportConfig
from pipeline.outputs import atomic_write, jet_lut, safe_name, save_heatmap

log = logging.getLogger(__name__)

STATS = ("energy_in_box", "pointing_hit", "border_fraction", "cam_entropy", "coverage")
FAITHFULNESS = ("deletion_auc", "insertion_auc", "drop_in_confidence", "increase_in_confidence")


@dataclass
class Audit:
    """The audit tables of one run (also written to output_dir)."""

    classes: pd.DataFrame
    groups: pd.DataFrame | None
    confusion: pd.DataFrame | None
    headline: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- inputs


def load_run(output_dir: Path) -> tuple[pd.DataFrame, dict]:
    """summary.parquet and run.json of a finished run."""
    summary_path = output_dir / "summary.parquet"
    if not summary_path.exists():
        raise ConfigError(f"{output_dir} has no summary.parquet: is it a gradcam-audit output?")
    summary = pd.read_parquet(summary_path)
    record_path = output_dir / "run.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    return summary, record


def class_names_of(summary: pd.DataFrame, record: dict) -> dict[int, str]:
    """Index -> name, from run.json, else from the summary's own label columns."""
    names = {i: n for i, n in enumerate(record.get("model", {}).get("class_names") or [])}
    for idx, label in (("pred_index", "pred_label"), ("target_index", "target_label")):
        for i, n in summary[[idx, label]].dropna().drop_duplicates().itertuples(index=False):
            names.setdefault(int(i), str(n))
    for i in summary["label_index"].dropna().unique():
        names.setdefault(int(i), str(int(i)))
    return unique_names(names)


def unique_names(names: dict[int, str]) -> dict[int, str]:
    """Names that are unique and never 'label' (ImageNet has two 'crane's): 'crane (134)'."""
    seen: dict[str, int] = {}
    for name in names.values():
        seen[name] = seen.get(name, 0) + 1
    return {i: f"{n} ({i})" if seen[n] > 1 or n == "label" else n for i, n in names.items()}


def _key(summary: pd.DataFrame, group_by: str) -> pd.Series:
    if group_by == "target":
        return summary["target_index"]
    if group_by == "label":
        return summary["label_index"]
    raise ConfigError(f"report.group_by={group_by!r}; expected target or label")


# ----------------------------------------------------------------------------- statistics


def _aggregate(ok: pd.DataFrame, key: pd.Series, extra: list[str]) -> pd.DataFrame:
    """Per class (key) and extra columns: n, accuracy and the attention statistics.

    Attention statistics are grouped by `key` (explained class or label); accuracy always by the
    true label: the share of a class's labelled images that were predicted right.
    """
    frame = ok.assign(
        _k=key.loc[ok.index].astype(int),
        correct=ok["correct"].astype("float64"),
        pointing_hit=ok["pointing_hit"].astype("float64"),
    )
    grouped = frame.groupby(["_k", *extra], sort=True)
    table = pd.DataFrame({"n": grouped.size()})
    labelled = frame[frame["label_index"].notna()]
    by_label = labelled.assign(_k=labelled["label_index"].astype(int)).groupby(["_k", *extra])
    table = table.join(
        pd.DataFrame({"n_labelled": by_label.size(), "accuracy": by_label["correct"].mean()}),
        how="outer",
    )
    table["n"] = table["n"].fillna(0).astype(int)
    table["n_labelled"] = table["n_labelled"].fillna(0).astype(int)
    table["pred_score_mean"] = grouped["pred_score"].mean()
    for stat in STATS:
        table[f"{stat}_mean"] = grouped[stat].mean()
        table[f"{stat}_median"] = grouped[stat].median()
    for col in FAITHFULNESS:  # present when the run computed them
        if col in frame.columns and frame[col].notna().any():
            table[f"{col}_mean"] = grouped[col].mean()
    for point in ("centroid", "peak"):  # where the attention sits across the class's images
        var = grouped[f"{point}_x"].var(ddof=0) + grouped[f"{point}_y"].var(ddof=0)
        table[f"{point}_spread"] = np.sqrt(var)
        table[f"{point}_x_mean"] = grouped[f"{point}_x"].mean()
        table[f"{point}_y_mean"] = grouped[f"{point}_y"].mean()
    return table


def _robust_outliers(values: pd.Series, eligible: pd.Series, cfg: ReportConfig) -> pd.DataFrame:
    """Leave-one-out robust z-score of each class against the other eligible classes."""
    rows = []
    for cls, value in values.items():
        others = values[eligible & (values.index != cls)].dropna()
        if pd.isna(value) or len(others) < 2 or not eligible[cls]:
            rows.append((cls, np.nan, np.nan))
            continue
        med = float(others.median())
        mad = max(1.4826 * float((others - med).abs().median()), cfg.mad_floor)
        rows.append((cls, (value - med) / mad, med))
    return pd.DataFrame(rows, columns=["cls", "z", "others"]).set_index("cls")


def _flags(classes: pd.DataFrame, cfg: ReportConfig) -> tuple[list[bool], list[list[str]]]:
    """Shortcut flags per class: off-object, border and fixed-location attention."""
    eligible = classes["n"] >= cfg.min_class_n
    reasons: dict[int, list[str]] = {c: [] for c in classes.index}
    checks = [
        (
            "energy_in_box_mean",
            -1,
            cfg.min_gap,
            "attention off the object: {v:.0%} of the map inside the box vs {o:.0%} for other "
            "classes (robust z {z:.1f})",
        ),
        (
            "pointing_hit_mean",
            -1,
            cfg.min_gap,
            "attention off the object: the peak is inside the box in {v:.0%} of images vs {o:.0%} "
            "for other classes (robust z {z:.1f})",
        ),
        (
            "border_fraction_mean",
            +1,
            cfg.min_gap,
            "attention on the image border: {v:.0%} of the map in the outer eighth vs {o:.0%} for "
            "other classes (robust z {z:+.1f})",
        ),
        (
            "peak_spread",
            -1,
            cfg.fixed_min_gap,
            "attention fixed in one place: the peak sits at ({x:.2f}, {y:.2f}) in nearly every "
            "image, spread {v:.3f} vs {o:.3f} for other classes (robust z {z:.1f})",
        ),
    ]
    for column, sign, gap, text in checks:
        z = _robust_outliers(classes[column], eligible, cfg)
        for cls in classes.index:
            zc, others = z.loc[cls, "z"], z.loc[cls, "others"]
            value = classes.loc[cls, column]
            if pd.isna(zc) or sign * zc < cfg.z_threshold or sign * (value - others) < gap:
                continue
            if column == "peak_spread" and classes.loc[cls, "pointing_hit_mean"] >= 0.5:
                continue  # a fixed place on the object: the objects themselves sit still
            reasons[cls].append(
                text.format(
                    v=value,
                    o=others,
                    z=zc,
                    x=classes.loc[cls, "peak_x_mean"],
                    y=classes.loc[cls, "peak_y_mean"],
                )
            )
    outside = classes.get("mean_map_outside_boxes")
    if outside is not None:
        for cls in classes.index:
            if reasons[cls] and pd.notna(outside[cls]) and outside[cls] >= 0.5:
                reasons[cls].append(
                    f"{outside[cls]:.0%} of the class's mean map lies outside all of its boxes"
                )
    order = list(classes.index)
    return [bool(reasons[c]) for c in order], [reasons[c] for c in order]


# ----------------------------------------------------------------------------- mean maps


def _load_map(path: Path, size: tuple[int, int]) -> np.ndarray | None:
    try:
        heat = np.load(path).astype(np.float32)
    except (OSError, ValueError):
        return None
    if heat.shape != size:
        heat = np.asarray(Image.fromarray(heat, "F").resize(size[::-1], Image.BILINEAR))
    return np.clip(heat, 0.0, 1.0)


def jet_png(heat: np.ndarray, path: Path, side: int = 192) -> None:
    """A [0,1] map as a jet-coloured PNG, scaled so its maximum is red."""
    top = float(heat.max()) if heat.size else 0.0
    norm = heat / top if top > 0 else heat
    rgb = jet_lut()[np.round(np.clip(norm, 0, 1) * 255).astype(np.int64)]  # (h,w,3)
    image = Image.fromarray(rgb).resize((side, side), Image.BILINEAR)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _mean_maps(
    ok: pd.DataFrame, key: pd.Series, out: Path, size: tuple[int, int], names: dict[int, str]
) -> pd.DataFrame:
    """Per class: the mean of its normalised maps at input size (saved as .npy + PNG)."""
    h, w = size
    ys = (np.arange(h) + 0.5) / h
    xs = (np.arange(w) + 0.5) / w
    rows = []
    for cls, part in ok.groupby(key.loc[ok.index]):
        cls = int(cls)
        total = np.zeros(size, np.float64)
        union = np.zeros(size, bool)
        count = 0
        for rel, x0, y0, x1, y1, width, height, e in part[
            ["heatmap_path", "x0", "y0", "x1", "y1", "width", "height", "energy_in_box"]
        ].itertuples(index=False):
            heat = _load_map(out / rel, size) if isinstance(rel, str) else None
            if heat is None:
                continue
            total += heat
            count += 1
            if pd.notna(e):  # the row had a valid box
                union |= (
                    (xs[None, :] >= x0 / width)
                    & (xs[None, :] <= x1 / width)
                    & (ys[:, None] >= y0 / height)
                    & (ys[:, None] <= y1 / height)
                )
        if not count:
            continue
        mean = (total / count).astype(np.float32)
        folder = out / "classes" / safe_name(cls, names.get(cls, str(cls)))
        save_heatmap(folder / "mean_map.npy", mean)
        jet_png(mean, folder / "mean_map.png")
        mass = float(mean.sum())
        outside = float(mean[~union].sum() / mass) if union.any() and mass > 0 else np.nan
        rows.append(
            {
                "class_index": cls,
                "mean_map_path": str((folder / "mean_map.npy").relative_to(out)),
                "mean_map_png": str((folder / "mean_map.png").relative_to(out)),
                "mean_map_outside_boxes": outside,
            }
        )
    return pd.DataFrame(
        rows, columns=["class_index", "mean_map_path", "mean_map_png", "mean_map_outside_boxes"]
    ).set_index("class_index")


def _examples(ok: pd.DataFrame, key: pd.Series, cls: int, k: int) -> list[int]:
    """The class's most off-object rows: least energy in the box, else most on the border."""
    part = ok[key.loc[ok.index] == cls]
    if part["energy_in_box"].notna().any():
        part = part.sort_values("energy_in_box", na_position="last")
    else:
        part = part.sort_values("border_fraction", ascending=False, na_position="last")
    return part["row"].head(k).astype(int).tolist()  # rows, not ids: ids may repeat


# ----------------------------------------------------------------------------- tables


def class_audit(
    summary: pd.DataFrame,
    out: Path,
    cfg: ReportConfig,
    names: dict[int, str],
    input_size: tuple[int, int],
) -> pd.DataFrame:
    """One row per class occurring as label, prediction or target, with stats and flags."""
    key = _key(summary, cfg.group_by)
    ok = summary[(summary["status"] == "ok") & key.notna()]
    present = pd.concat([summary[c] for c in ("label_index", "pred_index", "target_index")])
    index = sorted(int(i) for i in present.dropna().unique())
    stats = _aggregate(ok, key, [])
    classes = stats.reindex(index)
    classes.index.name = "class_index"
    classes["n"] = classes["n"].fillna(0).astype(int)
    classes["n_labelled"] = classes["n_labelled"].fillna(0).astype(int)
    errors = summary[summary["status"] == "error"]["label_index"].dropna().astype(int)
    classes["n_errors"] = errors.value_counts().reindex(index).fillna(0).astype(int).values
    wrong = ok[ok["correct"].astype("boolean").eq(False).fillna(False)]
    classes["n_misclassified"] = (
        key.loc[wrong.index].astype(int).value_counts().reindex(index).fillna(0).astype(int).values
    )
    maps = _mean_maps(ok, key, out, input_size, names)
    classes = classes.join(maps)
    flagged, reasons = _flags(classes, cfg)
    classes["flagged"] = flagged
    classes["flag_reasons"] = reasons
    classes["examples"] = [
        _examples(ok, key, c, cfg.examples) if f else [] for c, f in zip(classes.index, flagged)
    ]
    classes.insert(0, "class", [names.get(c, str(c)) for c in classes.index])
    return classes.reset_index()


def group_audit(summary: pd.DataFrame, cfg: ReportConfig, names: dict[int, str]) -> pd.DataFrame:
    """Per (class, group) statistics and the gaps between a class's groups."""
    key = _key(summary, cfg.group_by)
    ok = summary[(summary["status"] == "ok") & key.notna() & summary["group"].notna()]
    table = _aggregate(ok, key, ["group"]).reset_index()
    table = table.rename(columns={"_k": "class_index"})
    table.insert(0, "class", [names.get(c, str(c)) for c in table["class_index"]])
    attention = (
        "energy_in_box_mean"
        if table["energy_in_box_mean"].notna().any()
        else ("border_fraction_mean")
    )
    gaps = []
    for cls, part in table.groupby("class_index"):
        acc = part.loc[part["n_labelled"] >= cfg.group_min_n, "accuracy"].dropna()
        att = part.loc[part["n"] >= cfg.group_min_n, attention].dropna()
        acc_gap = float(acc.max() - acc.min()) if len(acc) >= 2 else np.nan
        att_gap = float(att.max() - att.min()) if len(att) >= 2 else np.nan
        reasons = []
        if acc_gap > cfg.accuracy_gap:
            lo, hi = part.loc[acc.idxmin(), "group"], part.loc[acc.idxmax(), "group"]
            reasons.append(
                f"accuracy gap {acc_gap:.0%}: {acc.min():.0%} for {lo} vs {acc.max():.0%} for {hi}"
            )
        if att_gap > cfg.attention_gap:
            lo, hi = part.loc[att.idxmin(), "group"], part.loc[att.idxmax(), "group"]
            reasons.append(
                f"attention gap in {attention.removesuffix('_mean')} {att_gap:.2f}: "
                f"{att.min():.2f} for {lo} vs {att.max():.2f} for {hi}"
            )
        gaps.append((cls, acc_gap, att_gap, bool(reasons), reasons))
    gap_table = pd.DataFrame(
        gaps, columns=["class_index", "accuracy_gap", "attention_gap", "gap_flagged", "gap_reasons"]
    )
    return table.merge(gap_table, on="class_index", how="left")


def confusion_table(summary: pd.DataFrame, names: dict[int, str]) -> pd.DataFrame | None:
    """Label x prediction counts (ok rows with a usable label): `label`, then one column a class."""
    ok = summary[(summary["status"] == "ok") & summary["label_index"].notna()]
    if ok.empty:
        return None
    index = sorted(int(i) for i in pd.concat([ok["label_index"], ok["pred_index"]]).unique())
    counts = pd.crosstab(ok["label_index"].astype(int), ok["pred_index"].astype(int))
    counts = counts.reindex(index=index, columns=index, fill_value=0).astype("int64")
    counts.index = [names.get(i, str(i)) for i in index]
    counts.columns = [names.get(i, str(i)) for i in index]
    return counts.rename_axis("label").reset_index()


def _write_parquet(table: pd.DataFrame, path: Path) -> None:
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    atomic_write(path, lambda tmp: pq.write_table(arrow, tmp))


def build_audit(output_dir: str | Path, cfg: ReportConfig) -> Audit:
    """Write classes.parquet, groups.parquet, confusion.parquet, the mean maps and report.html."""
    from pipeline.report_html import write_html

    out = Path(output_dir)
    summary, record = load_run(out)
    names = class_names_of(summary, record)
    size = tuple(record.get("model", {}).get("input_size") or ())
    if len(size) != 2:
        size = _guess_size(summary, out)
    classes = class_audit(summary, out, cfg, names, size)
    _write_parquet(classes, out / "classes.parquet")
    groups = None
    if summary["group"].notna().any():
        groups = group_audit(summary, cfg, names)
        _write_parquet(groups, out / "groups.parquet")
    confusion = confusion_table(summary, names)
    if confusion is not None:
        _write_parquet(confusion, out / "confusion.parquet")
    ok = summary["status"] == "ok"
    headline = {
        "rows": int(len(summary)),
        "ok": int(ok.sum()),
        "errors": int((~ok).sum()),
        "accuracy": float(summary.loc[ok, "correct"].astype("float64").mean())
        if summary.loc[ok, "correct"].notna().any()
        else None,
        "classes": int(len(classes)),
        "flagged": int(classes["flagged"].sum()),
        "group_by": cfg.group_by,
        "model": record.get("model", {}).get("source"),
        "layer": record.get("model", {}).get("layer"),
        "images_per_second": record.get("timing", {}).get("images_per_second"),
    }
    audit = Audit(classes, groups, confusion, headline)
    write_html(out, audit, summary, names)
    log.info(
        "report: %d classes, %d flagged -> %s",
        len(classes),
        headline["flagged"],
        out / "report.html",
    )
    return audit


def _guess_size(summary: pd.DataFrame, out: Path) -> tuple[int, int]:
    """Input size when run.json is missing: the first saved map's shape."""
    for rel in summary["heatmap_path"].dropna():
        try:
            return tuple(np.load(out / rel, mmap_mode="r").shape)
        except (OSError, ValueError):
            continue
    return (1, 1)


def main(argv: list[str] | None = None) -> None:
    """`gradcam-audit-report OUTPUT_DIR [report.key=value ...]`: rebuild the audit of a run."""
    import argparse
    import sys

    from omegaconf import OmegaConf

    parser = argparse.ArgumentParser(
        prog="gradcam-audit-report",
        description="Rebuild classes/groups/confusion tables and report.html from a finished run "
        "(summary.parquet + saved maps), without TensorFlow.",
    )
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("overrides", nargs="*", help="report.KEY=VALUE, e.g. report.group_by=label")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        base = OmegaConf.structured(ReportConfig)
        record_path = args.output_dir / "run.json"
        if record_path.is_file():  # the settings the run used, then the command line's
            saved = json.loads(record_path.read_text()).get("config", {}).get("report") or {}
            base = OmegaConf.merge(base, saved)
        dotlist = [o.removeprefix("report.") for o in args.overrides]
        cfg = OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.from_dotlist(dotlist)))
        build_audit(args.output_dir, cfg)
    except ConfigError as exc:
        print(f"gradcam-audit-report: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # omegaconf validation of overrides
        if type(exc).__module__.startswith("omegaconf"):
            print(
                f"gradcam-audit-report: error: bad setting: {exc}".splitlines()[0], file=sys.stderr
            )
            sys.exit(2)
        raise
    print(f"report: {args.output_dir / 'report.html'}")
