"""Strategy clusters and audit flags across two runs: clusters matched by their members,
clusters that appeared or vanished, flags gained and lost (from each run's own audit)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd


class ClusterChanges(NamedTuple):
    changed: pd.Series  # per row: its B cluster is not the match of its A cluster (null: n/a)
    appeared: dict[str, list[str]]  # class -> B's clusters no A cluster matches, described
    vanished: dict[str, list[str]]  # class -> A's clusters no B cluster matches
    count_a: dict[str, int]  # class -> clusters in A
    count_b: dict[str, int]


def _members(ids: pd.Series) -> dict[str, set[int]]:
    members: dict[str, set[int]] = {}
    for i, c in zip(ids.index, ids):
        if isinstance(c, str):
            members.setdefault(c, set()).add(i)
    return members


def match_clusters(ids_a: pd.Series, ids_b: pd.Series, least: float) -> dict[str, str]:
    """A's cluster -> B's cluster: pairs of the same class, most shared members first (Jaccard
    of the rows they hold), one to one, at least `least`."""
    a, b = _members(ids_a), _members(ids_b)
    pairs = []
    for ca, ma in a.items():
        for cb, mb in b.items():
            if ca.rpartition("#")[0] == cb.rpartition("#")[0]:
                pairs.append((len(ma & mb) / len(ma | mb), ca, cb))
    matched: dict[str, str] = {}
    for jaccard, ca, cb in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
        if jaccard >= least and ca not in matched and cb not in matched.values():
            matched[ca] = cb
    return matched


def _cluster_info(out: Path) -> dict[str, str]:
    """'<class>#<k>' -> 'cluster k (n images, share of the class[, flagged])' from
    clusters.parquet (empty without one)."""
    path = out / "clusters.parquet"
    if not path.is_file():
        return {}
    table = pd.read_parquet(path, columns=["class", "cluster", "n", "share", "flagged"])
    return {
        f"{c['class']}#{int(c['cluster'])}": f"cluster {int(c['cluster'])} ({int(c['n'])} images, "
        f"{c['share']:.0%} of the class{', flagged' if c['flagged'] else ''})"
        for _, c in table.iterrows()
    }


def cluster_changes(
    ids_a: pd.Series, ids_b: pd.Series, least: float, out_a: Path, out_b: Path
) -> ClusterChanges:
    """Match the two runs' clusters (rows of both runs only) and list what changed by class."""
    matched = match_clusters(ids_a, ids_b, least)
    both = ids_a.notna() & ids_b.notna()
    changed = pd.Series(pd.NA, index=ids_a.index, dtype="boolean")
    changed[both] = [matched.get(x) != y for x, y in zip(ids_a[both], ids_b[both])]
    info_a, info_b = _cluster_info(out_a), _cluster_info(out_b)
    appeared: dict[str, list[str]] = {}
    vanished: dict[str, list[str]] = {}
    seen_b = set(matched.values())
    for c in sorted(set(ids_a.dropna())):
        if c not in matched:
            vanished.setdefault(c.rpartition("#")[0], []).append(info_a.get(c, c))
    for c in sorted(set(ids_b.dropna())):
        if c not in seen_b:
            appeared.setdefault(c.rpartition("#")[0], []).append(info_b.get(c, c))
    return ClusterChanges(changed, appeared, vanished, _per_class(ids_a), _per_class(ids_b))


def _per_class(ids: pd.Series) -> dict[str, int]:
    """class -> how many clusters the run has in it."""
    counts: dict[str, int] = {}
    for c in set(ids.dropna()):
        counts[c.rpartition("#")[0]] = counts.get(c.rpartition("#")[0], 0) + 1
    return counts


def flags_of(out: Path) -> pd.DataFrame:
    """class -> flagged, flag_reasons from the run's classes.parquet (empty without one)."""
    path = out / "classes.parquet"
    if not path.is_file():
        return pd.DataFrame(columns=["flagged", "flag_reasons"], index=pd.Index([], name="class"))
    table = pd.read_parquet(path, columns=["class", "flagged", "flag_reasons"])
    table["flag_reasons"] = [list(r) if r is not None else [] for r in table["flag_reasons"]]
    return table.drop_duplicates("class").set_index("class")


def join_flags_and_clusters(
    classes: pd.DataFrame, out_a: Path, out_b: Path, clusters: ClusterChanges
) -> pd.DataFrame:
    """The class table with each run's audit flags (gained / lost) and strategy changes."""
    flags_a, flags_b = flags_of(out_a), flags_of(out_b)
    names = classes["class"]
    found = [flags.reindex(names) for flags in (flags_a, flags_b)]
    for side, f in zip("ab", found):
        classes[f"flagged_{side}"] = f["flagged"].fillna(False).astype(bool).to_numpy()
    for side, f in zip("ab", found):
        classes[f"flag_reasons_{side}"] = [
            r if isinstance(r, list) else [] for r in f["flag_reasons"]
        ]
    classes["flag_change"] = np.select(
        [
            classes["flagged_b"] & ~classes["flagged_a"],
            classes["flagged_a"] & ~classes["flagged_b"],
        ],
        ["gained", "lost"],
        "",
    )
    classes["clusters_a"] = [int(clusters.count_a.get(n, 0)) for n in names]
    classes["clusters_b"] = [int(clusters.count_b.get(n, 0)) for n in names]
    classes["clusters_appeared"] = [clusters.appeared.get(n, []) for n in names]
    classes["clusters_vanished"] = [clusters.vanished.get(n, []) for n in names]
    return classes
