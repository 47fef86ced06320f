"""`--help` of every command and subcommand prints its help and exits 0 (argparse formats
help strings with %, so a stray percent sign in one breaks the whole listing)."""

from __future__ import annotations

import argparse

import pytest

from klbudget.cli import build_parser, main


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*prefix, name))


COMMANDS = list(_commands(build_parser()))


def test_every_command_is_listed():
    assert len(COMMANDS) > 12 and ("sweep",) in COMMANDS and ("world", "build") in COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "klbudget")
def test_help_prints_and_exits_0(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*command, "--help"])
    assert stop.value.code == 0
    assert "usage: klbudget" in capsys.readouterr().out
