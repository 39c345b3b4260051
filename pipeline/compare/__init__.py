"""Comparing two audits (no TensorFlow): what changed between two runs, row by row and class
by class.

In flow order:
  settings.py    CompareConfig: the command's key=value settings and their checks
  rows.py        open both runs, join their rows on (id, occurrence, rank), per-row changes;
                 the maps on a common grid (cosine similarity, region shares, class sums)
  regions.py     named regions (border, corners, edges, centre, object box) and the words
                 for where attention moved
  strategies.py  strategy clusters matched across the runs; audit flags gained and lost
  classes.py     per class: the changes, the drift score, drift_flagged and its reasons
  html.py        compare.html
  build.py       compare_runs: all of the above, and the four files

The command line is pipeline.cli.compare (`gradcam-audit-compare`).
"""

from pipeline.compare.build import CompareResult, compare_runs, default_output_dir
from pipeline.compare.settings import CompareConfig, compare_settings

__all__ = [
    "CompareConfig",
    "CompareResult",
    "compare_settings",
    "compare_runs",
    "default_output_dir",
]
