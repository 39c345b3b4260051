"""config.validate: every value the schema's types cannot rule out, checked at start, one line
each; and the CAM method's own checks when it is built from its config group."""

from __future__ import annotations

import pytest
from conftest import compose_cfg
from omegaconf import OmegaConf

from pipeline.cam import from_config
from pipeline.config import validate
from pipeline.errors import ConfigError

CUSTOM = ["model=custom", "model.path=m.keras", "data.manifest=m.csv"]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["batch_size=0"], "batch_size=0; expected a positive integer"),
        (["chunk_batches=0"], "chunk_batches=0; expected a positive integer"),
        (["cam.batch_size=0"], "cam.batch_size=0; expected a positive integer"),
        (["cam.max_channels=-1"], "cam.max_channels=-1; expected an integer >= 0"),
        (["heatmaps.resolution=full"], "heatmaps.resolution='full'; expected layer or input"),
        (["overlays.alpha=1.5"], "overlays.alpha=1.5; expected a value in [0, 1]"),
        (["overlays.max_side=4"], "overlays.max_side=4; expected at least 8"),
        (["devices=gpu"], "devices='gpu'; expected auto or all"),
        (["precision=half"], "precision='half'; expected float32 or mixed_float16"),
        (["max_error_rate=2"], "max_error_rate=2.0; expected a value in [0, 1]"),
        (["stop_grace_s=-1"], "stop_grace_s=-1.0; expected a value >= 0 (seconds)"),
        (["log_level=warning"], "log_level='warning'; expected info or debug"),
        (["stats.pointing_tolerance=-1"], "stats.pointing_tolerance=-1.0; expected a value >= 0"),
        (["model.score=softmax"], "model.score='softmax'; expected logits or probs"),
        (["model.topk=0"], "model.topk=0; expected a positive integer"),
        (["model.weights=imagenet"], "model.weights=imagenet is for presets"),
        (["model.input_size=[1]"], "model.input_size=[1]; expected [height, width]"),
        (["target=best"], "target='best'; expected pred, label, topk or a class index"),
        (["target=-2"], "target=-2 is out of range; expected a class index >= 0"),
        (["shard.count=2", "shard.index=2"], "shard.index=2 with shard.count=2"),
        (["metrics.names=[sparsity]"], "metrics.names has ['sparsity']"),
        (["metrics.steps=0"], "metrics.steps=0; expected a positive integer"),
        (["report.group_by=labels"], "report.group_by='labels'; expected target or label"),
        (["strategies.grid=1"], "strategies.grid=1; expected an integer >= 2"),
    ],
)
def test_bad_values_are_refused_in_one_line(overrides, message):
    cfg = compose_cfg(*CUSTOM, *overrides)
    with pytest.raises(ConfigError) as caught:
        validate(cfg)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_required_inputs():
    with pytest.raises(ConfigError, match="model=custom needs model.path"):
        validate(compose_cfg("model=custom", "data.manifest=m.csv"))
    with pytest.raises(ConfigError, match="data.manifest is required"):
        validate(compose_cfg("model=custom", "model.path=m.keras"))
    validate(compose_cfg())  # the demo brings its own model and manifest
    validate(compose_cfg(*CUSTOM, "target=topk", "metrics.names=[deletion]"))


def test_a_method_checks_its_own_options_when_built():
    cam = OmegaConf.to_object(compose_cfg("cam=scorecam", "cam.eigen_smooth=true").cam)
    with pytest.raises(ConfigError, match="cam.eigen_smooth does not apply to cam=scorecam"):
        from_config(cam)
