"""Every ``ipledger`` command's ``--help`` says what it does and what each option is.

Built from the real parser: each sub-command has a description, each option and argument a help
text, and each command that reads settings the epilog on their precedence (flag > environment >
file > default); ``--help`` of every command exits 0.
"""

from __future__ import annotations

import argparse

import pytest

from service import cli


def _commands() -> dict[str, argparse.ArgumentParser]:
    (commands,) = [
        action
        for action in cli.build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    return dict(commands.choices)


@pytest.mark.parametrize("name", sorted(_commands()))
def test_each_command_says_what_it_does_and_what_each_option_is(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sub = _commands()[name]
    assert sub.description, f"ipledger {name} has no description"
    undocumented = [
        action.option_strings or [action.dest]
        for action in sub._actions
        # A group of sub-commands is described by its commands' own helps.
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
        and not action.help
    ]
    assert undocumented == [], f"ipledger {name}: options without help"
    if any("--config" in action.option_strings for action in sub._actions):
        assert sub.epilog is not None and "ipledger config" in sub.epilog
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args([name, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: ipledger {name}")
