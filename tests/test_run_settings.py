"""RunSettings (gan/settings.py): one name per training setting, the CLI made from it, and the resume rule."""
import argparse

import pytest

from mura_aug import cli
from mura_aug.errors import UserError
from mura_aug.gan.configs import CONFIG_NAMES
from mura_aug.gan.settings import RunSettings
from mura_aug.settings import flag_name


def parse(*argv):
    parser = cli.build_parser("train")
    return parser.parse_args(list(argv))


def test_every_setting_is_shaping_or_run_control_or_says_what_the_call_does():
    names = [field.name for field in RunSettings.settings_fields()]
    groups = [RunSettings.SHAPING, RunSettings.RUN_CONTROL, ("resume", "run")]
    assert sorted(name for group in groups for name in group) == sorted(names)  # each exactly once


def test_the_command_line_is_made_from_the_settings(capsys):
    parser = cli.build_parser("train")
    flags = {option for action in parser._actions for option in action.option_strings}
    for field in RunSettings.settings_fields():
        assert flag_name(field.name) in flags, field.name
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(kimg; default 1000)" in help_text and "(ticks; default 10)" in help_text  # from the settings
    assert "{" + ",".join(CONFIG_NAMES) + "}" in help_text  # the choices of their owner, configs.CONFIG_NAMES
    with pytest.raises(SystemExit):
        parse("--cfg", "tiny")  # --label is required on the command line
    args = parse("--label", "both", "--keep", "2", "--no-progress", "--mirror", "--resolution", "none")
    settings = RunSettings.from_args(args)
    assert (settings.label, settings.keep, settings.progress, settings.mirror, settings.resolution) == \
        ("both", 2, False, True, None)
    assert set(settings.given_values()) == {"label", "keep", "progress", "mirror", "resolution", "resume"}
    assert settings.kimg == RunSettings.default_of("kimg")  # what was not typed has its default


def test_notebook_parameters_are_the_upper_case_names():
    settings = RunSettings.from_parameters({"WORKSPACE": "ws", "LABEL": "negative", "KIMG": 2, "KEEP": 1,
                                            "KEEP_NETWORKS_EVERY": 4})
    assert (settings.label, settings.kimg, settings.keep, settings.keep_networks_every) == ("negative", 2, 1, 4)
    assert set(settings.given_values()) == {"label", "kimg", "keep", "keep_networks_every", "resume"}


STORED = dict(RunSettings(label="negative", cfg="tiny", resolution=32, kimg=50, kimg_per_tick=0.5, snap=2, batch=8,
                          seed=3, keep=1, metrics_every=2, device="cpu").to_dict(), run="XR_SHOULDER-negative-tiny-32")


def test_a_resume_keeps_what_shapes_the_training_and_takes_the_calls_control(capsys):
    given = {"label": "negative", "cfg": "auto", "resolution": None, "seed": 3, "kimg": 80, "max_minutes": 5.0,
             "snap": None}
    lines = []
    settings = RunSettings.for_resume(STORED, given, report=lines.append)
    # shaping: the run's (cfg tiny although auto was given; resolution None means 'the automatic one': no note)
    assert (settings.cfg, settings.resolution, settings.kimg_per_tick, settings.batch, settings.seed) == \
        ("tiny", 32, 0.5, 8, 3)
    # run control: given, else the run's (snap None is no value: the run's 2), else the default
    assert (settings.kimg, settings.max_minutes, settings.snap, settings.keep, settings.metrics_every) == \
        (80, 5.0, 2, 1, 2)
    assert settings.keep_networks_every == RunSettings.default_of("keep_networks_every")
    assert settings.device == "cpu" and settings.run == "XR_SHOULDER-negative-tiny-32"
    assert len(lines) == 1 and "kept the run's own cfg tiny (given auto)" in lines[0]
    assert "resolution" not in lines[0] and "seed" not in lines[0]


def test_runs_written_before_this_version_still_resume():
    legacy = {"label": "positive", "cfg": "tiny", "resolution": 16, "kimg": 0.016, "kimg_per_tick": 0.008, "snap": 1,
              "batch": 4, "seed": 0, "keep_states": 1, "keep_networks_every": 2, "metrics_every": 0,
              "metrics_fakes": None, "device": "cuda:0", "amp": None, "gamma": None, "mirror": False,
              "batch_gpu": None, "transfer": None, "freeze_d": 0, "max_minutes": None, "progress": False,
              "compile": False, "channels_last": False, "world_size": 1, "run": "XR_SHOULDER-positive-tiny-16",
              "history": []}
    settings = RunSettings.for_resume(legacy, {"kimg": 0.024}, report=None)
    assert settings.keep == 1  # stored as keep_states
    assert settings.metrics_fakes == RunSettings.default_of("metrics_fakes")  # a stored null: the default
    assert settings.amp == "auto"
    assert settings.device is None  # the GPU it ran on then, not a setting: the default again
    assert (settings.kimg, settings.snap, settings.progress) == (0.024, 1, False)
    assert RunSettings.stored_values({"amp": "bfloat16"})["amp"] == "bf16"


def test_impossible_values_name_the_setting_and_its_spellings():
    with pytest.raises(UserError, match=r"keep = 0 \(--keep / KEEP\)"):
        RunSettings(keep=0).check()
    with pytest.raises(UserError, match="RESOLUTION = 24 px is not a power of two"):
        RunSettings(resolution=24).check()
    with pytest.raises(UserError, match="kimg .* has no value"):
        RunSettings(kimg=None).check()
    with pytest.raises(UserError, match="not both"):
        RunSettings(resume="runs/state-000001.000kimg.pt", transfer="ffhq256").check()
    # the notebooks' rerun after a disconnect: RESUME = "latest" with TRANSFER still set is fine
    assert RunSettings(resume="latest", transfer="ffhq256").check().transfer == "ffhq256"


def test_the_stored_form_uses_the_setting_names():
    stored = RunSettings(keep=2).to_dict()
    assert stored["keep"] == 2 and "keep_states" not in stored
    assert "resume" not in stored  # what one call does is not a setting of the run
    assert "given_names" not in stored
    args = argparse.Namespace(**{"label": "positive"})
    assert RunSettings.from_args(args).given_names == ("label",)
