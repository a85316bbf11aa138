import subprocess
import sys
import types

from mura_aug import cli
from mura_aug.errors import UserError


def test_help_lists_every_command(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_exits_2(capsys):
    assert cli.main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err


def test_user_error_is_printed_without_traceback(monkeypatch, capsys):
    module = types.ModuleType("mura_aug_fake_stage")
    module.add_arguments = lambda parser: parser.add_argument("--path")

    def run(args):
        raise UserError(f"No MURA folder at {args.path}.", "Pass the folder that holds MURA-v1.1.")

    module.run = run
    monkeypatch.setitem(sys.modules, "mura_aug_fake_stage", module)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("mura_aug_fake_stage", "a test stage"))
    assert cli.main(["fake", "--path", "/nowhere"]) == 2
    err = capsys.readouterr().err
    assert "No MURA folder at /nowhere." in err and "What to do:" in err
    assert "Traceback" not in err


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "mura_aug", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "prepare" in result.stdout
