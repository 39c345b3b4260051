"""The audit of a finished run, from its summary.parquet and saved maps (no TensorFlow).

In flow order:
  strategies.py  the clustering numerics: each class's maps -> spectral clusters (SpRAy)
  aggregate.py   per-class and per-cluster statistics of summary rows
  flags.py       shortcut flags of classes and clusters, against chance and the other classes
  clusters.py    the strategy stage: clusters each class, flags the clusters, clusters.parquet
  virelay.py     the strategies as a ViRelAy project (strategies.virelay=true)
  types.py       `Audit`, the tables of one run that audit.py builds and html.py renders
  html.py        report.html, one self-contained page
  audit.py       build_audit: the class, group and confusion tables, then all of the above

The command line is pipeline.cli.report (`gradcam-audit-report`).
"""

from pipeline.report.audit import audit_settings, build_audit
from pipeline.report.types import Audit

__all__ = ["Audit", "audit_settings", "build_audit"]
