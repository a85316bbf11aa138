"""bench/bench_demo_recipe.py trains each variant with its changes, and only that run."""
import json

import pytest

from bench_scripts import load_bench_script
from gan_datasets import make_dataset
from mura_aug.gan import configs, loop


def _bench():
    return load_bench_script("bench_demo_recipe")


@pytest.mark.parametrize("variant, lr, mixing, pl_weight, mapping_lr", [("no-mixing-no-pl", 0.0025, 0.0, 0.0, None),
                                                                        ("lr-x2", 0.005, 0.9, 2.0, None),
                                                                        ("mapping-lr-0.1", 0.0025, 0.9, 2.0, 0.1)])
def test_a_variant_trains_with_its_changes_and_leaves_the_loop_as_it_was(tmp_path, variant, lr, mixing, pl_weight,
                                                                         mapping_lr):
    bench = _bench()
    workspace = make_dataset(tmp_path / "ws", res=32)
    bench.train_one(workspace.root, variant, kimg=0.016, seed=3, label="positive")
    run = workspace.experiments / bench.run_of(variant, 3, "positive")
    options = json.loads((run / "training_options.json").read_text())
    config = options.get("config", options)
    assert config["lr"] == pytest.approx(lr)
    assert config["loss_kwargs"]["style_mixing_prob"] == mixing and config["loss_kwargs"]["pl_weight"] == pl_weight
    assert config["G_kwargs"]["mapping_kwargs"].get("lr_multiplier") == mapping_lr
    assert options["seed"] == 3
    assert loop.make_config is configs.make_config  # later runs in this process get the committed recipe
