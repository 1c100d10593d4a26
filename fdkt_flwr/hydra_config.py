"""Hydra view of the run configuration: the same dataclasses, registered as a structured config."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fdkt_flwr.config import FdktConfig, from_nested

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
SCHEMA_NAME = "fdkt_schema"
LAUNCH_KEYS = ("launch", "hydra")


@dataclass
class LaunchConfig:
    """How a sweep job runs; not part of the app's run config."""

    clients: int = 3  # simulated SuperNodes
    cpus_per_client: int = 1  # Ray CPUs per ClientApp; more than the machine has hangs Ray
    timeout: float = 3600.0  # seconds per job


@dataclass
class SweepConfig(FdktConfig):
    launch: LaunchConfig = field(default_factory=LaunchConfig)


def register() -> None:
    """Register the schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=SweepConfig)


def split(cfg: Any) -> tuple[FdktConfig, dict[str, Any]]:
    """A composed Hydra config -> (validated app config, launch settings)."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    launch = container.get("launch", {}) or {}
    app = {k: v for k, v in container.items() if k not in LAUNCH_KEYS}
    return from_nested(app), dict(launch)


def compose(overrides: Sequence[str] = ()) -> tuple[FdktConfig, dict[str, Any]]:
    """Compose ``conf/config.yaml`` with overrides, outside a Hydra app (tests, scripts)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    return split(cfg)
