"""`switchyard`: operate a Switchyard service from a terminal or a CI job, through its admin API.

Exit codes: 0 ok, 1 refused by the server (its message in words), 2 usage error, 3 cannot connect.
"""

from __future__ import annotations

import click

from admin.cli.base import common
from admin.cli.deployments import deploy, endpoints, history, promote, rollback
from admin.cli.local import completion, console, models, serve
from admin.cli.observe import audit, metrics, status
from admin.cli.rollouts import rollout


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@common
def cli() -> None:
    """Operate a Switchyard service: endpoints, splits, canary rollouts, metrics and the audit log.

    Connects to --url with --token, or SWITCHYARD_URL and SWITCHYARD_TOKEN, or a --profile from
    ~/.config/switchyard/config.toml, else http://127.0.0.1:3000 with the token `make serve` wrote.
    """


for command in (status, endpoints, deploy, promote, rollback, history, rollout, models, audit, metrics, serve,
                console, completion):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="switchyard")
