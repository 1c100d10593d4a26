"""FDKT ClientApp: Flower wiring only. The logic is in :mod:`fdkt_flwr.client`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fdkt_flwr.client import ClientState, FdktClient, leak_index_for
from fdkt_flwr.config import from_flat
from fdkt_flwr.leakguard import make_leak_guard
from fdkt_flwr.protocol import HelloReply, SynthesizeRequest, TrainRequest

_flwr_log = logging.getLogger("flwr")
_STATE_KEY = "fdkt"

# Every reply passes the leak guard: a message carrying private text is blocked and reported.
app = ClientApp(mods=[make_leak_guard(
    lambda ctx: leak_index_for(from_flat(ctx.run_config), ctx.node_config))])


def _client(context: Context) -> FdktClient:
    cfg = from_flat(context.run_config)
    rec = context.state.get(_STATE_KEY)
    state = ClientState.from_state_dict(json.loads(str(rec["json"]))) if rec else None
    # In deployment the ledger persists in a node-local file so that repeated runs compose;
    # in simulation it lives in context.state for the run.
    ledger = context.node_config.get("ledger-path")
    return FdktClient(cfg, context.node_config, context.node_id, state=state,
                      ledger_path=Path(str(ledger)).expanduser() if ledger else None,
                      progress=_flwr_log.info)


def _save(context: Context, client: FdktClient) -> None:
    context.state[_STATE_KEY] = ConfigRecord({"json": json.dumps(client.state.state_dict())})


@app.query("synthesize")
def synthesize(msg: Message, context: Context) -> Message:
    req = SynthesizeRequest.from_record(msg.content)
    client = _client(context)
    reply = client.synthesize(req.server_round)
    _save(context, client)
    return Message(reply.to_record(), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    req = TrainRequest.from_record(msg.content)
    client = _client(context)
    reply = client.train(req.server_round, req.samples, req.zero_shot, req.num_new, req.demos)
    _save(context, client)
    return Message(reply.to_record(), reply_to=msg)


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    """Identify this node (a resumed run maps new node ids to known clients)."""
    from fdkt_flwr.client import client_identity

    return Message(HelloReply(client_identity(context.node_config, context.node_id)).to_record(),
                   reply_to=msg)
