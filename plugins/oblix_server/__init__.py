"""``oblix server``: an OpenAI-compatible HTTP server (extra ``oblix[server]``).

Registers the ``server`` command. Without starlette, uvicorn and prometheus_client the plugin is skipped
(``oblix plugins`` says what to install) and ``oblix server`` names the extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from oblix.plugin import hookimpl, needs

needs("starlette", "uvicorn", "prometheus_client", install="pip install 'oblix[server]'")

if TYPE_CHECKING:
    import click


@hookimpl
def oblix_register_commands(cli: click.Group) -> None:
    from oblix_server.command import server

    cli.add_command(server)
