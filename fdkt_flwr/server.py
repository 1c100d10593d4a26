"""The server's run: resolve the config, load the LLM once, run the strategy, write results."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fdkt_flwr.config import from_flat, to_run_config
from fdkt_flwr.results import RunResults, default_output_dir, write_json

CHECKPOINT = "checkpoint.json"

log = logging.getLogger("flwr")


def load_server_models(cfg) -> tuple[Any, Any]:
    """The server LLM and the sentence encoder, each loaded once per process."""
    from fdkt_flwr.llm import make_llm
    from fdkt_flwr.models import load_sentence_encoder

    kw: dict[str, Any] = {}
    if cfg.llm.backend == "openai":
        kw = {"base_url": cfg.llm.base_url, "api_key_env": cfg.llm.api_key_env}
    elif cfg.llm.backend == "transformers":
        kw = {"batch_size": cfg.llm.batch_size}
    llm = make_llm(cfg.llm.backend, cfg.llm.model, **kw)
    encoder = load_sentence_encoder(cfg.selection.embedder) if cfg.selection.enabled else None
    return llm, encoder


def run_server(grid: Any, run_config: Mapping[str, Any], run_id: int | str = 0) -> Path:
    """Run FDKT to completion and return the path of ``results.json``.

    Invalid settings fail here, before any client works, with one line naming the key.
    """
    cfg = from_flat(run_config)
    out = Path(cfg.output_dir).expanduser() if cfg.output_dir else default_output_dir(run_id)
    results = RunResults(out, to_run_config(cfg))
    ckpt_path = out / CHECKPOINT
    checkpoint = None
    if cfg.resume and ckpt_path.exists():
        checkpoint = json.loads(ckpt_path.read_text())
        results.data = checkpoint["results"]
        results.data["status"] = "running"
        results.data.setdefault("resumed", []).append(
            {"run_id": run_id, "after_round": checkpoint["strategy"]["completed_rounds"]})
    results.data["run_id"] = run_id
    results.write()
    log.info("[server] results will be written to %s", results.path)
    t_start = time.perf_counter()
    try:
        t0 = time.perf_counter()
        llm, encoder = load_server_models(cfg)
        results.add_time("server_model_loading", time.perf_counter() - t0)

        from fdkt_flwr.strategy import FdktStrategy

        strategy = FdktStrategy(cfg, llm, encoder, results)
        if checkpoint is not None:
            strategy.load_state_dict(checkpoint["strategy"])

        def save(s: FdktStrategy) -> None:
            write_json(ckpt_path, {"strategy": s.state_dict(), "results": results.data})

        strategy.start(grid, num_rounds=cfg.num_server_rounds, timeout=cfg.round_timeout,
                       checkpoint=save)
        stats = getattr(llm, "stats", None)
        if stats is not None and hasattr(stats, "snapshot"):
            results.data["llm"] = stats.snapshot()
    except BaseException:
        results.add_time("total", time.perf_counter() - t_start)
        results.write(status="failed")
        raise
    results.add_time("total", time.perf_counter() - t_start)
    path = results.write(status="completed")
    log.info("[server] final results:\n%s", results.summary_table())
    log.info("[server] results written to %s", path)
    return path
