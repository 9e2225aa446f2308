"""Flag parsing that needs no server: splits, durations, steps, completion, confirmation."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from admin.cli.deployments import split
from admin.cli.main import cli
from admin.cli.observe import seconds
from admin.cli.rollouts import steps


def test_the_stable_version_gets_what_the_canary_does_not() -> None:
    assert split("a", None, None, ()) == [{"tag": "a", "role": "stable", "weight": 100}]
    assert [v["weight"] for v in split("a", "b", None, ())] == [90, 10]
    assert split("a", "b", 25, ("c",))[2] == {"tag": "c", "role": "shadow", "weight": 0}
    with pytest.raises(click.UsageError, match="--weight"):
        split("a", None, 5, ())


def test_durations_and_steps() -> None:
    assert seconds("90s") == 90 and seconds("15m") == 900 and seconds("1.5h") == 5400
    with pytest.raises(click.BadParameter, match="like 30s"):
        seconds("yesterday")
    assert steps("5, 25,100") == [5, 25, 100]
    with pytest.raises(click.BadParameter) as info:
        steps("5,half,100")
    assert "--steps" in info.value.format_message()


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts(shell: str) -> None:
    out = CliRunner().invoke(cli, ["completion", shell])
    assert out.exit_code == 0 and "_SWITCHYARD_COMPLETE" in out.output


def test_completion_completes_commands_and_subcommands() -> None:
    def complete(words: str) -> list[str]:
        # As bash calls it: the words so far, and the index of the one being completed.
        cword = len(words.split()) - (0 if words.endswith(" ") else 1)
        env = {"_SWITCHYARD_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
        out = CliRunner().invoke(cli, [], env=env, prog_name="switchyard")
        return [line.split(",", 1)[1] for line in out.output.splitlines()]

    assert "rollout" in complete("switchyard roll")
    assert set(complete("switchyard rollout ")) >= {"start", "watch", "abort", "pause", "resume", "status"}


def test_a_change_without_a_terminal_needs_yes() -> None:
    out = CliRunner().invoke(cli, ["deploy", "digits", "--stable", "x", "--reason", "r"], input="")
    assert out.exit_code == 2 and "pass --yes" in out.output


def test_a_missing_reason_is_a_usage_error_naming_it() -> None:
    out = CliRunner().invoke(cli, ["promote", "digits", "--yes"])
    assert out.exit_code == 2 and "--reason" in out.output
