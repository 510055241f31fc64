"""``oblix server``: an OpenAI-compatible HTTP server (extra ``oblix[server]``).

Registers the ``server`` command. Starlette and uvicorn are imported only when the
command runs, so loading the plugin works without the extra.
"""

from __future__ import annotations

import click

from oblix_core import hookimpl


@hookimpl
def oblix_register_commands(cli: click.Group) -> None:
    from oblix_server.command import server

    cli.add_command(server)
