"""Tiny training runs for the tests: RunSettings at 16 px with two-iteration ticks, run by gan.loop.train."""
from mura_aug.gan import loop
from mura_aug.gan.settings import RunSettings

TICK_KIMG = 0.008  # 2 iterations of 4 images per tick: fast on a 2-core CPU
# metrics_extractor offline: the tests measure with the network that needs no download
FAST = dict(cfg="tiny", resolution=16, kimg_per_tick=TICK_KIMG, snap=1, batch=4, device="cpu", progress=False,
            metrics_extractor="offline")


def tiny_settings(label: str = "positive", **changes) -> RunSettings:
    """RunSettings of a tiny CPU run of `label`; `changes` replace FAST's values or add others."""
    return RunSettings(label=label, **{**FAST, **changes}).check()


def train_tiny(workspace, label: str = "positive", log=lambda text: None, on_tick=None, on_snapshot=None,
               **changes):
    """gan.loop.train with tiny_settings(label, **changes), silent unless `log` is given."""
    return loop.train(workspace, tiny_settings(label, **changes), on_tick=on_tick, on_snapshot=on_snapshot,
                      log=log)
