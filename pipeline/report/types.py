"""The `Audit` of one run: what audit.py builds and html.py renders (shared, so neither imports
the other back)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from pipeline.report.clusters import StrategyAudit


@dataclass
class Audit:
    """The audit tables of one run (also written to output_dir)."""

    classes: pd.DataFrame
    groups: pd.DataFrame | None
    confusion: pd.DataFrame | None
    headline: dict = field(default_factory=dict)
    strategies: StrategyAudit | None = None
    misclassified: list[int] = field(default_factory=list)  # rows: most confident mistakes
