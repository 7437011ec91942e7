"""Every subcommand of the ``cattune`` CLI is registered and explains itself with --help."""

import pytest

from cattune.cli.main import SUBCOMMAND_MODULES, build_parser, main


def test_every_stage_has_a_subcommand():
    assert set(SUBCOMMAND_MODULES) == {"data", "annotate", "train", "evaluate", "experiment", "report"}
    choices = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert set(choices) == set(SUBCOMMAND_MODULES)


@pytest.mark.parametrize("command", SUBCOMMAND_MODULES)
def test_help_exits_cleanly_and_describes_the_command(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: cattune {command}") and len(text.split()) > 40
