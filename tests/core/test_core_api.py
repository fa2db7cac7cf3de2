"""The public API and the command line are wired up."""

from __future__ import annotations

import subprocess
import sys

import pytest

import cfhdask
from cfhdask.cli import COMMANDS, build_parser


@pytest.mark.parametrize("name", sorted(cfhdask._API))
def test_every_public_name_resolves(name):
    obj = getattr(cfhdask, name)
    assert callable(obj)
    assert obj.__doc__, f"cfhdask.{name} has no docstring"


def test_unknown_attribute():
    with pytest.raises(AttributeError):
        cfhdask.no_such_thing  # noqa: B018


def test_every_command_is_registered_and_documented():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest in ("help",):
                continue
            assert action.help, f"cfhdask {name}: option {action.option_strings} has no help"


def test_cli_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "cfhdask", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for name in COMMANDS:
        assert name in out
