"""The settings of a comparison (`gradcam-audit-compare A B key=value ...`) and their checks."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import OmegaConf

from pipeline.errors import ConfigError


@dataclass
class CompareConfig:
    output_dir: str | None = None  # default: <RUN_B>/compare-vs-<name of RUN_A>
    grid: int = 32  # side of the common grid both runs' maps are resampled to
    group_by: str = "auto"  # label | target | auto (label when the rows have labels)
    min_class_n: int = 5  # compared rows a class needs before it can be flagged
    map_change: float = 0.15  # flag: 1 - cosine of the class's two mean maps reaches this
    region_shift: float = 0.25  # flag: this share of the map moved into or out of a region
    peak_spread_change: float = 0.1  # flag: the peaks' spread changed this much (image sides)
    accuracy_change: float = 0.5  # flag: the class's accuracy changed this much (retraining
    # alone moves it by tens of points without any change in where the model looks)
    cluster_match: float = 0.5  # least Jaccard overlap of members for two clusters to match
    rows_shown: int = 12  # rows whose maps changed most, shown in compare.html
    classes_shown: int = 12  # classes that changed most, shown with both mean maps


THRESHOLDS = ("map_change", "region_shift", "peak_spread_change", "accuracy_change")


def check_compare(cfg: CompareConfig) -> None:
    """ConfigError for values the schema's types cannot rule out."""
    limits = [
        ("grid", cfg.grid >= 4, "an integer >= 4"),
        ("group_by", cfg.group_by in ("auto", "label", "target"), "auto, label or target"),
        ("min_class_n", cfg.min_class_n >= 1, "an integer >= 1"),
        ("cluster_match", 0.0 < cfg.cluster_match <= 1.0, "a value in (0, 1]"),
        ("rows_shown", cfg.rows_shown >= 0, "an integer >= 0"),
        ("classes_shown", cfg.classes_shown >= 0, "an integer >= 0"),
    ]
    limits += [(key, getattr(cfg, key) > 0, "a value > 0") for key in THRESHOLDS]
    for key, ok, expected in limits:
        if not ok:
            raise ConfigError(f"{key}={getattr(cfg, key)!r}; expected {expected}")


def compare_settings(overrides: list[str] = ()) -> CompareConfig:
    """CompareConfig from `key=value` strings (types checked by OmegaConf, values here)."""
    known = list(CompareConfig.__dataclass_fields__)
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or key not in known:
            raise ConfigError(
                f"unknown setting {item!r}; expected KEY=VALUE with KEY one of {', '.join(known)}"
            )
    try:
        merged = OmegaConf.merge(
            OmegaConf.structured(CompareConfig), OmegaConf.from_dotlist(list(overrides))
        )
    except Exception as exc:  # omegaconf's validation errors have many types
        raise ConfigError(f"bad setting: {exc}".splitlines()[0]) from exc
    cfg = OmegaConf.to_object(merged)
    check_compare(cfg)
    return cfg
