"""FDKT ServerApp: Flower wiring only. The logic is in :mod:`fdkt_flwr.server`."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fdkt_flwr.server import run_server

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_server(grid, dict(context.run_config), run_id=context.run_id)
