"""Class- and group-level bias audit from a run's summary and maps (no TensorFlow needed)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import OmegaConf

from pipeline.config import ReportConfig, StrategiesConfig, check_report, check_strategies
from pipeline.errors import ConfigError
from pipeline.heatmaps import has_map, load_heatmaps
from pipeline.outputs import atomic_write, resize_map, safe_name, save_mean_map
from pipeline.overlays import (
    manifest_folder,
    overlay_mode,
    render_rows,
    report_rows,
    style_of,
    write_overlay_paths,
)
from pipeline.report.aggregate import aggregate
from pipeline.report.clusters import StrategyAudit, load_maps, strategy_audit
from pipeline.report.flags import class_flags
from pipeline.report.html import CLUSTER_EXAMPLES, write_html
from pipeline.report.types import Audit
from pipeline.report.virelay import export_virelay

log = logging.getLogger(__name__)


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
    """The class each row counts for: its explained class (target) or its true label."""
    return summary["label_index"] if group_by == "label" else summary["target_index"]


# ----------------------------------------------------------------------------- mean maps


def _at_size(heat: np.ndarray | None, size: tuple[int, int]) -> np.ndarray | None:
    if heat is None:
        return None
    return np.clip(resize_map(np.asarray(heat, np.float32), size), 0.0, 1.0)


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
        boxes = part[["x0", "y0", "x1", "y1", "width", "height", "energy_in_box"]]
        for saved, (x0, y0, x1, y1, width, height, e) in zip(
            load_heatmaps(out, part), boxes.itertuples(index=False)
        ):
            heat = _at_size(saved, size)
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
        save_mean_map(mean, folder / "mean_map")
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


def misclassified_rows(summary: pd.DataFrame, k: int) -> list[int]:
    """The k most confident wrong predictions (rank 0, ok, labelled): rows, by pred_score."""
    first = summary[(summary["rank"].fillna(0) == 0) & (summary["status"] == "ok")]
    wrong = first[first["correct"].astype("boolean").eq(False).fillna(False)]
    return wrong.sort_values("pred_score", ascending=False, kind="stable")["row"].head(k).tolist()


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
    stats = aggregate(ok, key, [])
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
    reasons = class_flags(classes, cfg)
    classes["flagged"] = [bool(r) for r in reasons]
    classes["flag_reasons"] = reasons
    classes["examples"] = [
        _examples(ok, key, c, cfg.examples) if r else [] for c, r in zip(classes.index, reasons)
    ]
    classes.insert(0, "class", [names.get(c, str(c)) for c in classes.index])
    return classes.reset_index()


def group_audit(summary: pd.DataFrame, cfg: ReportConfig, names: dict[int, str]) -> pd.DataFrame:
    """Per (class, group) statistics and the gaps between a class's groups."""
    key = _key(summary, cfg.group_by)
    ok = summary[(summary["status"] == "ok") & key.notna() & summary["group"].notna()]
    table = aggregate(ok, key, ["group"]).reset_index()
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


def build_audit(
    output_dir: str | Path,
    cfg: ReportConfig,
    strategies: StrategiesConfig | None = None,
    seed: int = 0,
) -> Audit:
    """Write the strategy clusters (summary's cluster column, clusters.parquet), classes.parquet,
    groups.parquet, confusion.parquet, the mean maps and report.html."""
    strategies = strategies or StrategiesConfig()
    check_report(cfg)
    check_strategies(strategies)
    out = Path(output_dir)
    summary, record = load_run(out)
    names = class_names_of(summary, record)
    size = tuple(record.get("model", {}).get("input_size") or ())
    if len(size) != 2:
        size = _guess_size(summary, out)
    found = strategy_audit(summary, _key(summary, cfg.group_by), out, strategies, seed, names, size)
    summary["cluster"] = found.cluster
    _write_strategies(out, found)
    if strategies.virelay and found.found:
        _virelay(out, summary, record, found, names, size)
    classes = join_strategies(class_audit(summary, out, cfg, names, size), found)
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
    wrong = misclassified_rows(summary, cfg.misclassified)
    audit = Audit(classes, groups, confusion, headline, found, wrong)
    summary["overlay_path"] = _report_overlays(out, summary, record, audit)
    write_html(out, audit, summary, names)
    log.info(
        "report: %d classes, %d flagged -> %s",
        len(classes),
        headline["flagged"],
        out / "report.html",
    )
    return audit


def _report_overlays(out: Path, summary: pd.DataFrame, record: dict, audit: Audit) -> pd.Series:
    """overlays.select=report (or auto beyond max_rows_all): render the overlays of the rows
    the report shows, from the stored maps, and record them in summary.parquet."""
    config = record.get("config", {})
    o = config.get("overlays", {})
    n = int(summary["row"].nunique())
    mode = overlay_mode(o.get("select", "all"), o.get("enabled", True), n, o.get("max_rows_all", 0))
    if mode != "report":
        return summary["overlay_path"]
    wanted = report_rows(
        audit.classes, audit.strategies.clusters, summary, CLUSTER_EXAMPLES, audit.misclassified
    )
    todo = [p for p in wanted if not isinstance(summary["overlay_path"].iloc[p], str)]
    if not todo:
        return summary["overlay_path"]
    style = style_of(config)
    paths = render_rows(out, summary, todo, style, manifest_folder(record, out))
    write_overlay_paths(out, paths)
    log.info("overlays: %d rows the report shows, rendered from the stored maps", len(todo))
    return paths


def join_strategies(classes: pd.DataFrame, found: StrategyAudit) -> pd.DataFrame:
    """n_clusters, eigengap and suspicion per class; a flagged cluster flags its class too."""
    classes = classes.set_index("class_index")
    classes["n_clusters"] = 0
    classes["eigengap"] = np.nan
    for result in found.found:
        classes.loc[result.class_index, ["n_clusters", "eigengap"]] = (
            result.n_clusters,
            result.eigengap,
        )
    own = [1.0 + 0.5 * len(r) if r else 0.0 for r in classes["flag_reasons"]]
    classes["suspicion"] = pd.Series(own, index=classes.index)
    for _, c in found.clusters.iterrows():
        cls = c["class_index"]
        classes.loc[cls, "suspicion"] = max(classes.loc[cls, "suspicion"], c["suspicion"])
        if not c["flagged"]:
            continue
        head = f"cluster {c['cluster']} ({c['share']:.0%} of the class, {c['n']} images): "
        classes.at[cls, "flag_reasons"] = [
            *classes.at[cls, "flag_reasons"],
            *(head + r for r in c["flag_reasons"]),
        ]
        if not classes.at[cls, "flagged"]:  # flagged by its cluster: show its typical members
            classes.at[cls, "examples"] = [*classes.at[cls, "examples"], *c["example_rows"]]
    classes["flagged"] = [bool(r) for r in classes["flag_reasons"]]
    classes["n_clusters"] = classes["n_clusters"].astype("int32")
    return classes.reset_index()


def _virelay(
    out: Path,
    summary: pd.DataFrame,
    record: dict,
    found: StrategyAudit,
    names: dict[int, str],
    size: tuple[int, int],
) -> Path:
    """The strategies as a ViRelAy project in out/virelay (strategies.virelay=true)."""
    base = manifest_folder(record, out)
    paths = summary["path"].tolist()
    return export_virelay(
        out / "virelay",
        summary,
        lambda rows: load_maps(out, summary.iloc[rows]),
        lambda position: base / paths[position],
        found.found,
        names,
        size,
        model=str(record.get("model", {}).get("source") or "Keras classifier"),
        method=str(summary["method"].dropna().iloc[0]) if summary["method"].notna().any() else "",
    )


def _write_strategies(out: Path, found: StrategyAudit) -> None:
    """Fill summary.parquet's cluster column (int32, -1 where none); write clusters.parquet."""
    path = out / "summary.parquet"
    table = pq.read_table(path)
    index = table.schema.get_field_index("cluster")
    column = pa.array(found.cluster, pa.int32())
    table = (
        table.set_column(index, "cluster", column)
        if index >= 0
        else table.append_column("cluster", column)
    )
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    _write_parquet(found.clusters, out / "clusters.parquet")


def _guess_size(summary: pd.DataFrame, out: Path) -> tuple[int, int]:
    """Input size when run.json is missing: the first saved map's shape."""
    for heat in load_heatmaps(out, summary[has_map(out, summary)].head(1)):
        if heat is not None:
            return tuple(heat.shape)
    return (1, 1)


def audit_settings(
    config: dict, overrides: list[str] = ()
) -> tuple[ReportConfig, StrategiesConfig, int]:
    """The report and strategies settings and seed a run used (its saved config), then
    `report.KEY=VALUE` / `strategies.KEY=VALUE` overrides."""
    merged = []
    for name, schema in (("report", ReportConfig), ("strategies", StrategiesConfig)):
        base = OmegaConf.merge(OmegaConf.structured(schema), config.get(name) or {})
        prefix = f"{name}."
        dotlist = [o.removeprefix(prefix) for o in overrides if o.startswith(prefix)]
        merged.append(OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.from_dotlist(dotlist))))
    unknown = [o for o in overrides if not o.startswith(("report.", "strategies."))]
    if unknown:
        raise ConfigError(
            f"unknown setting {unknown[0]!r}; expected report.KEY=VALUE or strategies.KEY=VALUE"
        )
    check_report(merged[0])
    check_strategies(merged[1])
    return merged[0], merged[1], int(config.get("seed", 0))
