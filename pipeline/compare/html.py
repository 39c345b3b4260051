"""compare.html: one self-contained page (the report's CSS, JS and helpers; pictures copied or
rendered into the compare folder, so every link is relative and the folder can be moved)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from pipeline.compare.rows import Run
from pipeline.heatmaps import load_heatmaps
from pipeline.images import LoadError
from pipeline.outputs import atomic_write, jet_png, safe_name
from pipeline.overlays import manifest_folder, save_overlay, style_of
from pipeline.report.html import CSS, JS, _figure, _fmt, esc

CLASS_COLUMNS = [  # (column, header, format) of the class table
    ("drift", "drift", "{:.2f}"),
    ("n_compared", "n", "{:d}"),
    ("accuracy_a", "accuracy A", "{:.1%}"),
    ("accuracy_b", "accuracy B", "{:.1%}"),
    ("mean_map_similarity", "mean-map sim.", "{:.2f}"),
    ("similarity_median", "row sim. median", "{:.2f}"),
    ("border_fraction_a", "border A", "{:.2f}"),
    ("border_fraction_b", "border B", "{:.2f}"),
    ("energy_in_box_a", "in box A", "{:.2f}"),
    ("energy_in_box_b", "in box B", "{:.2f}"),
    ("peak_spread_a", "peak spread A", "{:.3f}"),
    ("peak_spread_b", "peak spread B", "{:.3f}"),
    ("clusters_a", "clusters A", "{:d}"),
    ("clusters_b", "clusters B", "{:d}"),
]
LISTED = 20  # ids listed per side among the rows only one run has


class Shown(NamedTuple):
    """A row of the page's 'maps that changed most', with its two pictures."""

    row: pd.Series
    picture_a: tuple[str, str]  # (path relative to the compare folder, caption)
    picture_b: tuple[str, str]


def class_pictures(out: Path, classes: pd.DataFrame, means: dict, n: int) -> pd.DataFrame:
    """Both mean maps (jet PNG) of the n classes that drifted most, flagged first; their
    paths in mean_map_png_a / _b (null for the classes not shown)."""
    classes = classes.copy()
    classes["mean_map_png_a"], classes["mean_map_png_b"] = None, None
    order = classes.sort_values(["drift_flagged", "drift"], ascending=False, kind="stable")
    for i in order.index[:n]:
        name = classes.at[i, "class"]
        folder = Path("classes") / safe_name(int(i), str(name))
        for side, mean in zip(("a", "b"), means[name]):
            if not np.isfinite(mean).all():
                continue
            jet_png(mean, out / folder / f"mean_{side}.png")
            classes.at[i, f"mean_map_png_{side}"] = str(folder / f"mean_{side}.png")
    return classes


def _picture(out: Path, run: Run, pos: int, side: str, row: pd.Series) -> tuple[str, str]:
    """The row's overlay in this run, copied into the compare folder; rendered from the stored
    map when the run has none; the map alone when the image no longer loads."""
    s = run.summary.iloc[pos]
    stem = Path("rows") / side / f"{safe_name(int(s['row']), str(s['id']))}-k{int(row['rank'])}"
    overlay = s.get("overlay_path")
    if isinstance(overlay, str) and (run.path / overlay).is_file():
        rel = stem.with_suffix(Path(overlay).suffix)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run.path / overlay, out / rel)
        return str(rel), "overlay"
    heat = load_heatmaps(run.path, run.summary.iloc[[pos]])[0]
    heat = np.asarray(heat, np.float32)
    try:
        image = manifest_folder(run.record, run.path) / str(s["path"])
        rel = stem.with_suffix(".jpg")
        save_overlay(out / rel, str(image), heat, style_of(run.record.get("config", {})))
        return str(rel), "overlay rendered from the stored map"
    except LoadError:
        rel = stem.with_suffix(".png")
        jet_png(heat, out / rel)
        return str(rel), "the map alone (the image no longer loads)"


def row_pictures(out: Path, a: Run, b: Run, rows: pd.DataFrame, n: int) -> list[Shown]:
    """The n compared rows whose maps changed most (least similar first), with both pictures."""
    compared = rows[rows["compared"].astype(bool)]
    chosen = compared.sort_values("similarity", kind="stable").head(n)
    return [
        Shown(
            row,
            _picture(out, a, int(row["pos_a"]), "a", row),
            _picture(out, b, int(row["pos_b"]), "b", row),
        )
        for _, row in chosen.iterrows()
    ]


def _headline(record: dict) -> str:
    c = record["counts"]

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{v:.1%}"

    cards = [
        ("rows matched", c["matched"]),
        ("only in A", c["a_only"]),
        ("only in B", c["b_only"]),
        ("maps compared", c["compared"]),
        ("predictions changed", c["pred_changed"]),
        ("accuracy A → B", f"{pct(c['accuracy_a'])} → {pct(c['accuracy_b'])}"),
        ("classes drifted", c["drift_flagged"]),
    ]
    items = "".join(
        f'<div class="card"><b>{esc(v)}</b><span>{esc(k)}</span></div>' for k, v in cards
    )
    sub = f"A (before): {record['run_a']} · B (after): {record['run_b']}"
    return (
        f"<header><h1>Comparing two audits</h1><p>{esc(sub)}</p>"
        f"<div class='cards'>{items}</div></header>"
    )


def _value(v: object) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) else v
    return text if len(text) <= 120 else text[:117] + "…"


def _differences(record: dict) -> str:
    diff = record["differences"]
    if not diff:
        return (
            "<h2 id='differences'>What differs between the runs</h2><p class='ok'>Nothing in "
            "run.json: the same model file, layer, method, preprocessing, settings and versions."
            "</p>"
        )
    body = "".join(
        f"<tr><td class='t'>{esc(k)}</td><td class='t'>{esc(_value(v[0]))}</td>"
        f"<td class='t'>{esc(_value(v[1]))}</td></tr>"
        for k, v in diff.items()
    )
    return (
        f"<h2 id='differences'>What differs between the runs ({len(diff)})</h2>"
        "<table id='difference-table'><thead><tr><th class='t'>run.json key</th>"
        f"<th class='t'>A</th><th class='t'>B</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _class_article(c: pd.Series) -> str:
    """One class that changed: its reasons (or why it is not flagged) and both mean maps."""
    if c["drift_flagged"]:
        reasons = "".join(f"<li>{esc(r)}</li>" for r in c["drift_reasons"])
    else:
        reasons = f"<li class='note'>not flagged: drift {c['drift']:.2f} (flagged from 1)</li>"
    extra = [f"audit flag {c['flag_change']} in B"] if c["flag_change"] else []
    extra += [f"appeared in B: {x}" for x in c["clusters_appeared"]]
    extra += [f"vanished from A: {x}" for x in c["clusters_vanished"]]
    reasons += "".join(f"<li>{esc(x)}</li>" for x in extra)
    figures = [
        _figure(c[f"mean_map_png_{s}"], f"{label} mean map", f"{c['class']}: {label} mean map")
        for s, label in (("a", "A (before)"), ("b", "B (after)"))
        if isinstance(c[f"mean_map_png_{s}"], str)
    ]
    flag = " <b class=bad>drift flagged</b>" if c["drift_flagged"] else ""
    return (
        f"<article class='flag' data-class='{esc(c['class'])}'><h3>{esc(c['class'])}{flag} "
        f"<span class='note'>(drift {c['drift']:.2f}, {int(c['n_compared'])} rows compared)"
        f"</span></h3><ul>{reasons}</ul><div class='strip'>{''.join(figures)}</div></article>"
    )


def _classes(classes: pd.DataFrame) -> str:
    shown = classes[classes["mean_map_png_a"].notna() | classes["mean_map_png_b"].notna()]
    shown = shown.sort_values(["drift_flagged", "drift"], ascending=False, kind="stable")
    n_flagged = int(classes["drift_flagged"].sum())
    note = (
        "<p class='ok'>No class drifted past a threshold.</p>"
        if not n_flagged
        else f"<p class='note'>{n_flagged} class{'es' if n_flagged > 1 else ''} drifted; "
        "the most changed first.</p>"
    )
    return (
        f"<h2 id='drift'>Classes that changed most</h2>{note}"
        f"{''.join(_class_article(c) for _, c in shown.iterrows())}"
    )


def _class_row(c: pd.Series) -> str:
    """A class's line of the table: name, flags, then the numbers (sortable by data-v)."""
    words = [c["class"], "drift flagged" if c["drift_flagged"] else "", c["flag_change"]]
    numbers = [_fmt(c.get(column), pattern) for column, _, pattern in CLASS_COLUMNS]
    return (
        f"<tr{' class=flagged' if c['drift_flagged'] else ''}>"
        + "".join(f"<td class='t'>{esc(w)}</td>" for w in words)
        + "".join(f"<td data-v='{v}'>{t}</td>" for t, v in numbers)
        + "</tr>"
    )


def _class_table(classes: pd.DataFrame) -> str:
    head = "<th class='t'>class</th><th class='t'>drift flag</th><th class='t'>audit flag</th>"
    head += "".join(f"<th>{esc(label)}</th>" for _, label, _ in CLASS_COLUMNS)
    order = classes.sort_values("drift", ascending=False, kind="stable")
    body = "".join(_class_row(c) for _, c in order.iterrows())
    return (
        "<h2 id='classes'>All classes</h2>"
        "<input class='filter' data-target='#compare-class-table' placeholder='filter classes…'>"
        "<table class='sortable' id='compare-class-table'><thead><tr>"
        f"{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _rows(shown: list[Shown]) -> str:
    parts = [f"<h2 id='rows'>Rows whose maps changed most ({len(shown)})</h2>"]
    for s in shown:
        r = s.row
        pred = f"{r['pred_label_a']} → {r['pred_label_b']}"
        rank = f" · rank {int(r['rank'])}" if r["rank"] else ""
        figures = [
            _figure(src, f"{label}: {how}", f"{r['id']} in {label}")
            for label, (src, how) in (("A", s.picture_a), ("B", s.picture_b))
        ]
        parts.append(
            f"<article class='flag' data-row='{esc(r['id'])}'><h3>{esc(r['id'])}{esc(rank)} "
            f"<span class='note'>(class {esc(r['class'])} · predicted {esc(pred)} · "
            f"similarity {r['similarity']:.2f} · peak moved {r['peak_shift']:.2f})</span></h3>"
            f"<div class='strip'>{''.join(figures)}</div></article>"
        )
    return "".join(parts)


def _one_side(record: dict, rows_a: list[str], rows_b: list[str]) -> str:
    c = record["counts"]
    if not c["a_only"] and not c["b_only"]:
        return "<h2 id='one-side'>Rows in one run only</h2><p class='ok'>None: all matched.</p>"
    items = "".join(
        f"<li>only in {side} ({n}): {esc(', '.join(ids))}{' …' if n > len(ids) else ''}</li>"
        for side, n, ids in (("A", c["a_only"], rows_a), ("B", c["b_only"], rows_b))
        if n
    )
    return f"<h2 id='one-side'>Rows in one run only</h2><ul>{items}</ul>"


DRIFT_NOTE = (
    "How to read drift: each class's change is measured four ways, each divided by its "
    "threshold (compare.json's settings): 1 - cosine similarity of the class's two mean maps, "
    "the largest share of the map that moved into or out of a region (the border, a corner, an "
    "edge, the centre, the object box), the change in the spread of the peaks, and the change "
    "in accuracy. Drift is the largest of the four; a class is flagged from 1. Maps are "
    "compared on a common grid, so runs at different layers compare."
)


def _page(title: str, header: str, sections: list[str]) -> str:
    """A whole page: the report's CSS and JS inline, nothing fetched."""
    meta = (
        "<meta charset='utf-8'><meta name='viewport' content='width=device-width,initial-scale=1'>"
    )
    return "".join(
        [
            "<!doctype html><html lang='en'><head>",
            f"{meta}<title>{esc(title)}</title><style>{CSS}</style></head>",
            f"<body data-report='gradcam-audit-compare'>{header}<main>",
            *sections,
            f"<p class='note'>{esc(DRIFT_NOTE)}</p></main><script>{JS}</script></body></html>",
        ]
    )


def write_compare_html(
    out: Path, record: dict, classes: pd.DataFrame, shown: list[Shown], rows: pd.DataFrame
) -> Path:
    """compare.html in out: what differs, the classes and rows that changed most, all classes."""
    one = [rows.loc[rows["side"] == s, "id"].head(LISTED).tolist() for s in ("a_only", "b_only")]
    sections = [_differences(record), _classes(classes), _rows(shown), _class_table(classes)]
    page = _page("gradcam-audit compare", _headline(record), [*sections, _one_side(record, *one)])
    path = out / "compare.html"
    atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return path
