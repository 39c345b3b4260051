"""report.html: one self-contained page (inline CSS/JS, relative image links, no network)."""

from __future__ import annotations

import html
import math
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from pipeline.outputs import atomic_write
from pipeline.report.strategies import ClassStrategies
from pipeline.report.types import Audit

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2433;
background:#f5f6f8}
header{background:#1d2433;color:#fff;padding:20px 32px}
header h1{margin:0 0 4px;font-size:22px} header p{margin:0;color:#b9c0cf}
main{padding:8px 32px 48px;max-width:1400px}
h2{margin:28px 0 10px;font-size:18px;border-bottom:2px solid #dde1e8;padding-bottom:4px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-top:14px}
.card{background:#2c3547;border-radius:8px;padding:8px 14px;min-width:92px}
.card b{display:block;font-size:20px} .card span{color:#b9c0cf;font-size:12px}
.flag{background:#fff;border-left:5px solid #d9480f;border-radius:6px;padding:12px 16px;
margin:12px 0;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.flag h3{margin:0 0 6px} .flag ul{margin:4px 0 10px;padding-left:20px}
.strip{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;background:#fff;border:1px solid #dde1e8;border-radius:4px;padding:4px;
text-align:center} figure img{display:block;height:140px;max-width:220px;object-fit:contain}
figcaption{font-size:11px;color:#5b6477;max-width:220px;overflow:hidden;text-overflow:ellipsis;
white-space:nowrap}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:6px 0}
th,td{padding:4px 8px;border-bottom:1px solid #e6e9ef;text-align:right;white-space:nowrap}
th{background:#eef0f4;cursor:pointer;position:sticky;top:0;user-select:none}
th.sorted-asc::after{content:" \\25B2"} th.sorted-desc::after{content:" \\25BC"}
td.t,th.t{text-align:left} tr.flagged td{background:#fff4e6}
td img{height:40px;vertical-align:middle}
input.filter{padding:6px 10px;border:1px solid #c5cad5;border-radius:4px;width:260px}
.ok{color:#2b8a3e} .bad{color:#c92a2a} .note{color:#5b6477}
.confusion td{min-width:34px;text-align:center}
img.broken{outline:3px solid red}
.strategies{margin-top:10px} .strategies h4{margin:6px 0}
.strategy-row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.strategy{background:#f8f9fb;border:1px solid #dde1e8;border-radius:6px;padding:8px 10px;
max-width:640px} .strategy.flagged{background:#fff4e6;border:2px solid #d9480f}
.strategy figure img{height:96px;max-width:140px} .strategy figcaption{max-width:140px}
.strategy h5{margin:0 0 6px;font-size:13px} .strategy ul{margin:4px 0 8px;font-size:12px}
.swatch{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:5px}
svg.embedding{background:#fff;border:1px solid #dde1e8;border-radius:4px}
"""

JS = """
function cellValue(td){const v=td.dataset.v;if(v!==undefined&&v!==''&&!isNaN(+v))return +v;
return (v!==undefined?v:td.textContent).toLowerCase();}
document.querySelectorAll('table.sortable').forEach(table=>{
  table.querySelectorAll('th').forEach((th,col)=>{th.addEventListener('click',()=>{
    const asc=!th.classList.contains('sorted-asc');
    table.querySelectorAll('th').forEach(h=>h.classList.remove('sorted-asc','sorted-desc'));
    th.classList.add(asc?'sorted-asc':'sorted-desc');
    const body=table.tBodies[0];const rows=[...body.rows];
    rows.sort((a,b)=>{const x=cellValue(a.cells[col]),y=cellValue(b.cells[col]);
      if(x===y)return 0;if(x===''||x==='nan')return 1;if(y===''||y==='nan')return -1;
      return (x<y?-1:1)*(asc?1:-1);});
    rows.forEach(r=>body.appendChild(r));});});});
document.querySelectorAll('input.filter').forEach(input=>{input.addEventListener('input',()=>{
  const q=input.value.toLowerCase();
  document.querySelectorAll(input.dataset.target+' tbody tr').forEach(r=>{
    r.style.display=r.textContent.toLowerCase().includes(q)?'':'none';});});});
window.addEventListener('load',()=>{
  const imgs=[...document.images];
  const broken=imgs.filter(i=>!i.complete||i.naturalWidth===0);
  broken.forEach(i=>i.classList.add('broken'));
  document.body.dataset.images=imgs.length;document.body.dataset.broken=broken.length;
  document.body.dataset.ready='1';});
"""

MATRIX_MAX = 40  # more classes than this: a table of the commonest confusions instead
SCATTER_MAX = 1000  # at most this many of a class's maps in its 2-D picture (evenly spaced)
TSNE_ITER = 500  # t-SNE iterations: the layout of <= 1000 maps has settled by then
ITER = "max_iter" if "max_iter" in TSNE().get_params() else "n_iter"  # renamed in sklearn 1.5
CLUSTER_EXAMPLES = 4  # example overlays per cluster card
PALETTE = [  # cluster colours (matplotlib's tab10)
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]  # fmt: skip
CLASS_COLUMNS = [
    ("suspicion", "suspicion", "{:.2f}"),
    ("n_clusters", "clusters", "{:d}"),
    ("n", "n", "{:d}"),
    ("n_errors", "errors", "{:d}"),
    ("accuracy", "accuracy", "{:.1%}"),
    ("pred_score_mean", "score", "{:.3f}"),
    ("energy_in_box_mean", "in box", "{:.2f}"),
    ("pointing_hit_mean", "pointing", "{:.1%}"),
    ("border_fraction_mean", "border", "{:.2f}"),
    ("cam_entropy_mean", "entropy", "{:.2f}"),
    ("coverage_mean", "coverage", "{:.2f}"),
    ("peak_spread", "peak spread", "{:.3f}"),
    ("deletion_auc_mean", "deletion AUC", "{:.3f}"),
    ("insertion_auc_mean", "insertion AUC", "{:.3f}"),
    ("drop_in_confidence_mean", "avg drop", "{:.1%}"),
    ("increase_in_confidence_mean", "increase", "{:.1%}"),
    ("centroid_spread", "centroid spread", "{:.3f}"),
]


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def href(rel: str) -> str:
    """A relative link to a file of the output folder, safe for any characters in its name."""
    return quote(rel.replace("\\", "/"), safe="/")


def _fmt(value: object, pattern: str) -> tuple[str, str]:
    """(display text, sort value) of a table cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–", ""
    if "d" in pattern:
        value = int(value)
    return pattern.format(value), f"{float(value):.6g}"


def _figure(src: str, caption: str, title: str = "") -> str:
    return (
        f'<figure title="{esc(title or caption)}"><img src="{href(src)}" loading="eager" '
        f'alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'
    )


def _headline(h: dict) -> str:
    cards = [
        ("rows", h["rows"]),
        ("ok", h["ok"]),
        ("errors", h["errors"]),
        ("accuracy", f"{h['accuracy']:.1%}" if h.get("accuracy") is not None else "–"),
        ("classes", h["classes"]),
        ("flagged", h["flagged"]),
        ("images/s", f"{h['images_per_second']:.1f}" if h.get("images_per_second") else "–"),
    ]
    items = "".join(
        f'<div class="card"><b>{esc(v)}</b><span>{esc(k)}</span></div>' for k, v in cards
    )
    sub = (
        f"model {h.get('model') or '?'} · layer {h.get('layer') or '?'} · classes grouped by "
        f"{'explained class' if h['group_by'] == 'target' else 'true label'}"
    )
    return (
        f"<header><h1>Grad-CAM audit</h1><p>{esc(sub)}</p><div class='cards'>{items}</div></header>"
    )


def _by_suspicion(classes: pd.DataFrame) -> pd.DataFrame:
    """Most suspicious class first (ties keep the class order); as is for tables without it."""
    if "suspicion" not in classes.columns:
        return classes
    return classes.sort_values("suspicion", ascending=False, kind="stable")


def _overlays(rows: list[int], by_row: pd.DataFrame, limit: int | None = None) -> list[str]:
    """Figures of the overlays of summary rows (by `row` number) that have one."""
    figures = []
    for example in rows:
        if limit is not None and len(figures) >= limit:
            break
        if example not in by_row.index or not isinstance(by_row.loc[example, "overlay_path"], str):
            continue
        e = by_row.loc[example]
        stat = (
            f"in box {e['energy_in_box']:.2f}"
            if pd.notna(e["energy_in_box"])
            else f"border {e['border_fraction']:.2f}"
        )
        figures.append(_figure(e["overlay_path"], f"{e['id']} · {stat}", f"row {example}"))
    return figures


def _flagged(audit: Audit, summary: pd.DataFrame) -> str:
    flagged = _by_suspicion(audit.classes[audit.classes["flagged"]])
    parts = [f"<h2 id='flagged'>Flagged classes ({len(flagged)})</h2>"]
    if flagged.empty:
        parts.append(
            "<p class='ok'>No class is flagged: no class's attention sits off the object, "
            "on the border or in one fixed place far more than the others', and no strategy "
            "cluster inside a class does.</p>"
        )
    else:
        parts.append("<p class='note'>Most suspicious first.</p>")
    by_row = summary[summary["rank"].fillna(0) == 0].set_index("row")  # one row per image
    for _, row in flagged.iterrows():
        reasons = "".join(f"<li>{esc(r)}</li>" for r in row["flag_reasons"])
        figures = []
        if isinstance(row.get("mean_map_png"), str):
            figures.append(_figure(row["mean_map_png"], "mean map", f"mean map of {row['class']}"))
        figures += _overlays(row["examples"], by_row)
        suspicion = f" · suspicion {row['suspicion']:.2f}" if "suspicion" in row else ""
        parts.append(
            f"<article class='flag' data-class='{esc(row['class'])}'><h3>{esc(row['class'])} "
            f"<span class='note'>(n={int(row['n'])}{suspicion})</span></h3><ul>{reasons}</ul>"
            f"<div class='strip'>{''.join(figures)}</div>"
            f"{_strategies(audit, int(row['class_index']), summary, by_row)}</article>"
        )
    return "".join(parts)


# ----------------------------------------------------------------------------- strategies


def _class_strategies(audit: Audit, cls: int) -> ClassStrategies | None:
    """The clustering of one class, when the run clustered it."""
    if audit.strategies is None:
        return None
    return next((r for r in audit.strategies.found if r.class_index == cls), None)


def _strategies(audit: Audit, cls: int, summary: pd.DataFrame, by_row: pd.DataFrame) -> str:
    """A flagged class's strategy clusters: one card each (flagged first) and a 2-D picture."""
    if audit.strategies is None:  # an audit of a run from before strategies
        return ""
    table = audit.strategies.clusters  # empty: strategies off, or no class large enough
    own = table[table["class_index"] == cls]
    if own.empty:
        return ""
    own = own.sort_values(["flagged", "suspicion", "cluster"], ascending=[False, False, True])
    cards = "".join(_cluster_card(c, by_row) for _, c in own.iterrows())
    result = _class_strategies(audit, cls)
    picture = _scatter(result, own, summary) if result is not None else ""
    n_flagged = int(own["flagged"].sum())
    return (
        f"<section class='strategies' data-class-index='{cls}'><h4>Strategies "
        f"<span class='note'>({len(own)} cluster{'s' if len(own) > 1 else ''} of the class's "
        f"maps, {n_flagged} flagged)</span></h4>"
        f"<div class='strategy-row'>{picture}{cards}</div></section>"
    )


def _cluster_card(c: pd.Series, by_row: pd.DataFrame) -> str:
    """One strategy cluster: mean map, size, share, accuracy, reasons and a few examples."""
    k = int(c["cluster"])
    accuracy = c.get("accuracy")
    accuracy = f"accuracy {accuracy:.0%}" if pd.notna(accuracy) else "accuracy –"
    title = f"cluster {k} · {int(c['n'])} images · {c['share']:.0%} of the class · {accuracy}"
    figures = []
    if isinstance(c.get("mean_map_png"), str):
        figures.append(_figure(c["mean_map_png"], "mean map", f"mean map of cluster {k}"))
    examples = c.get("example_rows")
    if isinstance(examples, (list, np.ndarray)):  # a list here, an array from clusters.parquet
        figures += _overlays([int(r) for r in examples], by_row, CLUSTER_EXAMPLES)
    reasons = "".join(f"<li>{esc(r)}</li>" for r in c["flag_reasons"])
    flagged = bool(c["flagged"])
    return (
        f"<div class='strategy{' flagged' if flagged else ''}' data-cluster='{k}'>"
        f"<h5><span class='swatch' style='background:{_colour(k)}'></span>{esc(title)}"
        f"{' <b class=bad>flagged</b>' if flagged else ''}</h5>"
        f"{f'<ul>{reasons}</ul>' if reasons else ''}"
        f"<div class='strip'>{''.join(figures)}</div></div>"
    )


def _colour(cluster: int) -> str:
    return PALETTE[cluster % len(PALETTE)]


def sample_rows(n: int, limit: int) -> np.ndarray:
    """Positions of at most `limit` of n rows, evenly spaced, first and last included."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def embedding_2d(embedding: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n,m) spectral embedding -> (n,2): t-SNE, or its columns 1 and 2 for few rows or columns.

    Column 0 (the graph's trivial eigenvector) is skipped by the fallback; missing columns are 0.
    """
    n, m = embedding.shape
    if n < 10 or m < 3:
        flat = np.zeros((n, 2))
        flat[:, : max(min(m - 1, 2), 0)] = embedding[:, 1:3]
        return flat
    perplexity = min(30.0, (n - 1) / 3)
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed, **{ITER: TSNE_ITER})
    # one OpenMP thread: the same picture on every machine, and no spin-waiting when the cores
    # are busy (measured: 1000 maps 3 s on one thread, 12 s on two under load)
    with threadpool_limits(1, user_api="openmp"):
        return tsne.fit_transform(np.asarray(embedding, np.float64))


def _scatter(result: ClassStrategies, clusters: pd.DataFrame, summary: pd.DataFrame) -> str:
    """Inline SVG: the class's maps in 2-D (t-SNE of the spectral embedding), one dot per map
    (evenly subsampled past SCATTER_MAX), coloured by cluster, with a legend."""
    keep = sample_rows(len(result.labels), SCATTER_MAX)
    xy = embedding_2d(result.embedding[keep])
    labels = result.labels[keep]
    ids = summary["id"].to_numpy()[result.rows[keep]]  # rows: positions in the summary
    lo, span = xy.min(axis=0), np.maximum(np.ptp(xy, axis=0), 1e-12)
    width, height, pad = 300, 260, 12
    px = pad + (xy - lo) / span * [width - 2 * pad, height - 2 * pad]  # (n,2) in the plot area
    order = np.argsort(labels, kind="stable")  # the largest cluster first, small ones on top
    dots = "".join(
        f"<circle cx='{px[i, 0]:.1f}' cy='{px[i, 1]:.1f}' r='3' fill='{_colour(labels[i])}' "
        f"data-c='{labels[i]}'><title>{esc(ids[i])} · cluster {labels[i]}</title></circle>"
        for i in order
    )
    legend = "".join(
        f"<g transform='translate({width + 6},{18 + 18 * j})'>"
        f"<circle cx='5' cy='-4' r='5' fill='{_colour(int(c['cluster']))}'/>"
        f"<text x='14' y='0' font-size='11'>{int(c['cluster'])} (n={int(c['n'])})"
        f"{' flagged' if c['flagged'] else ''}</text></g>"
        for j, (_, c) in enumerate(clusters.sort_values("cluster").iterrows())
    )
    shown = f"{len(keep)} of {len(result.labels)}" if len(keep) < len(result.labels) else "all"
    return (
        f"<figure class='embedding'><svg class='embedding' xmlns='http://www.w3.org/2000/svg' "
        f"width='{width + 120}' height='{height}' viewBox='0 0 {width + 120} {height}' "
        f"role='img' data-points='{len(keep)}'><g fill-opacity='0.75'>{dots}</g>{legend}</svg>"
        f"<figcaption>maps in 2-D ({shown}), coloured by cluster</figcaption></figure>"
    )


def _class_table(audit: Audit) -> str:
    shown = [c for c in CLASS_COLUMNS if c[0] in audit.classes.columns]  # metrics when computed
    head = "<th class='t'>class</th><th class='t'>mean map</th><th class='t'>flag</th>" + "".join(
        f"<th{' class=sorted-desc' if column == 'suspicion' else ''}>{esc(label)}</th>"
        for column, label, _ in shown
    )
    classes = _by_suspicion(audit.classes)
    if "n_clusters" in classes.columns:  # 0: not clustered (too few rows, strategies off)
        classes = classes.assign(n_clusters=classes["n_clusters"].where(classes["n_clusters"] > 0))
    body = []
    for _, row in classes.iterrows():
        thumb = (
            f"<img src='{href(row['mean_map_png'])}' alt='mean map'>"
            if isinstance(row.get("mean_map_png"), str)
            else ""
        )
        cells = [
            f"<td class='t'>{esc(row['class'])}</td>",
            f"<td class='t'>{thumb}</td>",
            f"<td class='t' data-v='{int(row['flagged'])}'>"
            f"{'<b class=bad>flagged</b>' if row['flagged'] else ''}</td>",
        ]
        for column, _, pattern in shown:
            text, sort = _fmt(row.get(column), pattern)
            cells.append(f"<td data-v='{sort}'>{text}</td>")
        cls = " class='flagged'" if row["flagged"] else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (
        "<h2 id='classes'>All classes</h2>"
        "<input class='filter' data-target='#class-table' placeholder='filter classes…'>"
        "<p class='note'>Most suspicious first; click a column to sort. Means over the class's "
        "images; suspicion = strength of the class's or its worst cluster's flag (1 and over: "
        "flagged), clusters = attention strategies found in the class, "
        "in box = share of the map inside the object box, pointing = peak within "
        "stats.pointing_tolerance pixels of the box, "
        "border = share of the map in the outer eighth.</p>"
        f"<table class='sortable' id='class-table'><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _group_table(audit: Audit) -> str:
    if audit.groups is None or audit.groups.empty:
        return "<h2 id='groups'>Subgroups</h2><p class='note'>The manifest has no group column.</p>"
    columns = [
        ("n", "{:d}"),
        ("accuracy", "{:.1%}"),
        ("energy_in_box_mean", "{:.2f}"),
        ("border_fraction_mean", "{:.2f}"),
        ("accuracy_gap", "{:.1%}"),
        ("attention_gap", "{:.2f}"),
    ]
    head = (
        "<th class='t'>class</th><th class='t'>group</th>"
        + "".join(f"<th>{esc(c)}</th>" for c, _ in columns)
        + "<th class='t'>gap</th>"
    )
    body = []
    for _, row in audit.groups.iterrows():
        cells = [
            f"<td class='t'>{esc(row['class'])}</td>",
            f"<td class='t'>{esc(row['group'])}</td>",
        ]
        for column, pattern in columns:
            text, sort = _fmt(row.get(column), pattern)
            cells.append(f"<td data-v='{sort}'>{text}</td>")
        reasons = "; ".join(row["gap_reasons"]) if isinstance(row["gap_reasons"], list) else ""
        cells.append(f"<td class='t'>{esc(reasons)}</td>")
        cls = " class='flagged'" if row["gap_flagged"] else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    n_flag = audit.groups.drop_duplicates("class_index")["gap_flagged"].sum()
    return (
        f"<h2 id='groups'>Subgroups ({int(n_flag)} classes with gaps)</h2>"
        "<input class='filter' data-target='#group-table' placeholder='filter groups…'>"
        f"<table class='sortable' id='group-table'><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _confusion(audit: Audit) -> str:
    if audit.confusion is None:
        return "<h2 id='confusion'>Confusion</h2><p class='note'>No labels in the manifest.</p>"
    matrix = audit.confusion.set_index("label")
    if len(matrix) > MATRIX_MAX:
        return _top_confusions(matrix)
    head = "<th class='t'>label \\ predicted</th>" + "".join(
        f"<th>{esc(c)}</th>" for c in matrix.columns
    )
    rows = []
    for label, counts in matrix.iterrows():
        total = max(int(counts.sum()), 1)
        cells = [f"<td class='t'><b>{esc(label)}</b></td>"]
        for pred, count in counts.items():
            share = int(count) / total
            colour = "43,138,62" if pred == label else "201,42,42"
            text_colour = "#fff" if share > 0.55 else "#1d2433"
            cells.append(
                f"<td style='background:rgba({colour},{share:.3f});color:{text_colour}' "
                f"title='{esc(label)} → {esc(pred)}: {int(count)}'>{int(count)}</td>"
            )
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        "<h2 id='confusion'>Confusion (label × prediction)</h2>"
        "<p class='note'>Counts; shading is the share of the row "
        "(green: correct, red: confused).</p>"
        f"<table class='confusion'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
        "</table>"
    )


def _top_confusions(matrix: pd.DataFrame, top: int = 40) -> str:
    """Too many classes for a readable matrix: the commonest confusions as a sortable table."""
    pairs = matrix.stack()
    pairs = pairs[
        (pairs > 0) & (pairs.index.get_level_values(0) != pairs.index.get_level_values(1))
    ]
    totals = matrix.sum(axis=1)
    rows = []
    for (label, pred), count in pairs.sort_values(ascending=False).head(top).items():
        share = count / max(int(totals[label]), 1)
        rows.append(
            f"<tr><td class='t'>{esc(label)}</td><td class='t'>{esc(pred)}</td>"
            f"<td data-v='{int(count)}'>{int(count)}</td>"
            f"<td data-v='{share:.6g}'>{share:.1%}</td></tr>"
        )
    return (
        f"<h2 id='confusion'>Commonest confusions ({len(matrix)} classes: the full matrix is in "
        "confusion.parquet)</h2>"
        "<table class='sortable'><thead><tr><th class='t'>label</th><th class='t'>predicted</th>"
        f"<th>count</th><th>share of label</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _misclassified(audit: Audit, summary: pd.DataFrame) -> str:
    """The most confident wrong predictions: overlays where the run has them, else a list."""
    if not audit.misclassified:
        return ""
    by_row = summary[summary["rank"].fillna(0) == 0].set_index("row")
    figures, items = [], []
    for r in audit.misclassified:
        e = by_row.loc[r]
        caption = f"{e['id']} · {e['label']} → {e['pred_label']} ({e['pred_score']:.2f})"
        if isinstance(e["overlay_path"], str):
            figures.append(_figure(e["overlay_path"], caption, f"row {r}"))
        else:
            items.append(f"<li>{esc(caption)}</li>")
    listed = f"<ul>{''.join(items)}</ul>" if items else ""
    return (
        f"<h2 id='misclassified'>Misclassified examples ({len(audit.misclassified)})</h2>"
        "<p class='note'>The most confident wrong predictions (label → prediction, score), "
        f"report.misclassified at most.</p><div class='strip'>{''.join(figures)}</div>{listed}"
    )


def write_html(out: Path, audit: Audit, summary: pd.DataFrame, names: dict[int, str]) -> Path:
    """Render the report next to the run's files; every link is relative."""
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>gradcam-audit report</title><style>{CSS}</style></head>"
        "<body data-report='gradcam-audit'>"
        f"{_headline(audit.headline)}<main>{_flagged(audit, summary)}{_class_table(audit)}"
        f"{_group_table(audit)}{_confusion(audit)}{_misclassified(audit, summary)}"
        "<p class='note'>How to read a flag: a class is flagged when its attention is an outlier "
        "against the other classes (robust z-score of the class mean against the median and MAD "
        "of the others, plus a minimum absolute gap): little of the map inside the object box or "
        "its peak rarely on the object, much of it on the border, or its peak at nearly the same "
        "spot, off the object, in every image. A flag is a place to look, not a verdict: open "
        "the examples.</p>"
        f"</main><script>{JS}</script></body></html>"
    )
    path = out / "report.html"
    atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return path
