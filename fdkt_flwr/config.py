"""The run configuration: every setting, its default, its check and its documentation, once.

The dataclasses below are the single source of truth. Everything else is derived:

* ``[tool.flwr.app.config]`` in ``pyproject.toml`` (what ``flwr run --run-config`` overrides) is
  generated from them by ``python -m fdkt_flwr.config --write-pyproject``; a unit test fails if
  the two ever disagree.
* Hydra (``conf/``) registers the same dataclasses as a structured config, so a sweep's
  ``privacy.epsilon=1,3,8`` means exactly what ``--run-config "privacy.epsilon=1"`` means.

Flower's run-config keys use hyphens (``dataset.private-size``); Python fields and Hydra keys use
underscores (``dataset.private_size``). The mapping is mechanical, see :func:`flower_key`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """An invalid setting. The message is one line naming the key and the accepted values."""


def _opt(default: Any, help: str, choices: tuple[Any, ...] | None = None,
         check: str | None = None) -> Any:
    """A documented option: ``check`` is one of the validators in :data:`_CHECKS`."""
    return field(default=default, metadata={"help": help, "choices": choices, "check": check})


@dataclass
class DatasetConfig:
    name: str = _opt("fine-food", "registered name (fine-food), a CSV/JSONL/Parquet path, "
                     "or hf:<hub id>")
    text_column: str = _opt("", "text column; empty = the dataset's own default")
    label_column: str = _opt("", "label column; empty = the dataset's own default")
    partitioner: str = _opt("iid", "how the train split is divided among clients",
                            choices=("iid", "dirichlet"))
    dirichlet_alpha: float = _opt(0.5, "Dirichlet concentration over labels (smaller = more "
                                  "skewed)", check="positive")
    private_size: int = _opt(128, "private training examples per client (0 = whole partition)",
                             check="nonneg_int")
    test_size: int = _opt(200, "held-out test examples per client (0 = whole partition of the "
                          "test split)", check="nonneg_int")
    test_fraction: float = _opt(0.2, "fraction held out as test when the source has no test "
                                "split", check="fraction")
    domain: str = _opt("", "domain words for prompts; empty = the task template's own")


@dataclass
class PrivacyConfig:
    epsilon: float = _opt(8.0, "each client's total privacy budget ε (inf = non-private upper "
                          "bound)", check="epsilon")
    delta: float = _opt(1e-5, "δ of the (ε, δ) guarantee", check="fraction_open")
    max_grad_norm: float = _opt(1.0, "per-example clipping norm C", check="positive")
    noise_multiplier: float = _opt(0.0, "σ; 0 = calibrate σ to spend the budget ε",
                                   check="nonneg")
    accountant: str = _opt("prv", "privacy accountant", choices=("prv", "rdp"))
    leak_guard: bool = _opt(True, "block any client reply that carries private text verbatim")
    leak_guard_span: int = _opt(12, "consecutive private words that count as a leak",
                                check="positive_int")


@dataclass
class GeneratorConfig:
    model: str = _opt("smollm2-135m-instruct", "client generator (causal LM) fine-tuned with "
                      "DP-SGD")
    lora_rank: int = _opt(8, "LoRA rank of the DP fine-tuning (0 = full fine-tuning)",
                          check="nonneg_int")
    epochs: int = _opt(2, "DP fine-tuning epochs (steps = epochs / sample rate)",
                       check="positive_int")
    batch_size: int = _opt(32, "expected Poisson batch size (sample rate = batch / N)",
                           check="positive_int")
    # 4, not 16: on one CPU thread a DP step of 32 took the same time at physical batch 4, 8
    # and 16 (18.2 / 17.5 / 17.6 s) while peak memory fell from 5.3 to 2.3 GB
    # (benchmarks/bench.py dp-batch). On a GPU, raise it to what fits.
    max_physical_batch_size: int = _opt(4, "largest batch held in memory at once during DP "
                                        "fine-tuning (memory, not the math: the logical batch "
                                        "is batch-size)", check="positive_int")
    learning_rate: float = _opt(2e-3, "learning rate of the DP fine-tuning", check="positive")
    max_length: int = _opt(64, "tokens per private example (control code + text)",
                           check="positive_int")
    demos_per_label: int = _opt(16, "DP demonstrations sampled per label", check="positive_int")
    sample_batch_size: int = _opt(16, "prompts per batched generate call when sampling "
                                  "demonstrations", check="positive_int")
    max_new_tokens: int = _opt(64, "tokens per sampled demonstration", check="positive_int")
    temperature: float = _opt(1.0, "sampling temperature of demonstrations", check="positive")
    top_p: float = _opt(0.95, "nucleus sampling of demonstrations", check="fraction")


@dataclass
class LLMConfig:
    backend: str = _opt("transformers", "server LLM backend",
                        choices=("transformers", "openai", "vllm"))
    model: str = _opt("smollm2-135m-instruct", "server LLM (name, folder, hub id, or the "
                      "endpoint's model id)")
    base_url: str = _opt("", "OpenAI-compatible endpoint, e.g. http://gpu-box:8000/v1")
    api_key_env: str = _opt("OPENAI_API_KEY", "environment variable holding the endpoint's key")
    samples_per_label: int = _opt(16, "new samples per client, label and round",
                                  check="positive_int")
    demos_per_prompt: int = _opt(3, "demonstrations shown in each few-shot prompt",
                                 check="positive_int")
    max_new_tokens: int = _opt(160, "tokens per LLM answer", check="positive_int")
    temperature: float = _opt(0.8, "sampling temperature of augmentation", check="positive")
    top_p: float = _opt(0.9, "nucleus sampling of augmentation", check="fraction")
    batch_size: int = _opt(16, "prompts per batched generate call", check="positive_int")


@dataclass
class SelectionConfig:
    enabled: bool = _opt(True, "let the LLM filter the demonstrations before augmenting")
    embedder: str = _opt("all-minilm-l6-v2", "sentence encoder used to cluster demonstrations")
    clusters: int = _opt(4, "k-means clusters of demonstrations per client",
                         check="positive_int")
    samples_per_cluster: int = _opt(8, "demonstrations shown to the LLM per cluster",
                                    check="positive_int")


@dataclass
class SLMConfig:
    model: str = _opt("all-minilm-l6-v2", "client task model (encoder classifier, or a causal "
                      "LM scored by label likelihood)")
    epochs: int = _opt(4, "training epochs (the best on validation is kept)",
                       check="positive_int")
    batch_size: int = _opt(16, "training batch size", check="positive_int")
    learning_rate: float = _opt(2e-4, "learning rate", check="positive")
    max_length: int = _opt(128, "tokens per example", check="positive_int")
    synthetic_weight: float = _opt(1.0, "loss weight of a synthetic example relative to a "
                                   "private one", check="nonneg")
    schedule: str = _opt("mixed", "how private and synthetic data are mixed",
                         choices=("mixed", "synthetic-first"))
    validation_fraction: float = _opt(0.15, "share of the PRIVATE data held out for model "
                                      "selection (never the test split)", check="fraction_open")


BASELINES = ("local", "dp-synthetic", "zero-shot")


@dataclass
class FdktConfig:
    num_server_rounds: int = _opt(2, "rounds; each sends fresh generated samples to every "
                                  "client", check="positive_int")
    seed: int = _opt(0, "seed of partitioning, sampling and training", check="nonneg_int")
    output_dir: str = _opt("", "absolute results folder; empty = "
                           "~/fdkt-flwr-runs/<date>-<time>-run<id>")
    min_clients: int = _opt(2, "clients that must be connected before round 1",
                            check="positive_int")
    resume: bool = _opt(False, "continue the run in output-dir from its last completed round "
                        "(no client is asked for a second DP release)")
    min_replies: int = _opt(0, "clients that must report metrics in a round for the run to go "
                            "on; fewer ends the run as failed (results so far are written); "
                            "0 = no minimum, failures are only recorded",
                            check="nonneg_int")
    round_timeout: float = _opt(3600.0, "seconds the server waits for replies in each phase; "
                                "a client that has not answered by then is recorded as failed",
                                check="positive")
    baselines: str = _opt("local", "comma-separated baselines trained on the same split: "
                          "local (private only), dp-synthetic (private + the client's own DP "
                          "demonstrations, no LLM), zero-shot (private + LLM samples written "
                          "without demonstrations); empty = none", check="baselines")
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    slm: SLMConfig = field(default_factory=SLMConfig)


# --------------------------------------------------------------------------- validation

def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


_CHECKS: dict[str, tuple[Any, str]] = {
    "positive": (lambda v: v > 0, "must be > 0"),
    "nonneg": (lambda v: v >= 0, "must be >= 0"),
    "positive_int": (lambda v: v >= 1, "must be an integer >= 1"),
    "nonneg_int": (lambda v: v >= 0, "must be an integer >= 0"),
    "fraction": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "fraction_open": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    "epsilon": (lambda v: v > 0 and not math.isnan(v), "must be > 0 (or inf for non-private)"),
    "baselines": (lambda v: set(parse_list(v)) <= set(BASELINES),
                  "must be a comma-separated subset of " + ", ".join(BASELINES)),
}


def parse_list(value: str) -> list[str]:
    """``"local, zero-shot"`` -> ``["local", "zero-shot"]`` (run configs hold no lists)."""
    return [v.strip() for v in str(value).split(",") if v.strip()]


def flower_key(path: str) -> str:
    """``dataset.private_size`` -> ``dataset.private-size`` (the run-config spelling)."""
    return path.replace("_", "-")


def _coerce(key: str, value: Any, typ: type) -> Any:
    """Accept what TOML, Hydra or a CLI string may give and return ``typ``, or fail in one line."""
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (ValueError, TypeError, OverflowError):
        raise ConfigError(f"{key}={_fmt(value)}: must be a {typ.__name__}") from None


def _field_type(f) -> type:
    return {"str": str, "int": int, "float": float, "bool": bool}[f.type]


def _validate(cfg: FdktConfig) -> None:
    for path, f, value in _walk(cfg):
        key = flower_key(path)
        meta = f.metadata
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{key}={_fmt(value)}: must be one of "
                              f"{', '.join(map(str, meta['choices']))}")
        if meta.get("check"):
            ok, why = _CHECKS[meta["check"]]
            if not ok(value):
                raise ConfigError(f"{key}={_fmt(value)}: {why}")
    if cfg.output_dir and not Path(cfg.output_dir).expanduser().is_absolute():
        raise ConfigError(f"output-dir={cfg.output_dir!r}: must be an absolute path (the "
                          "ServerApp does not run in the app folder)")
    if cfg.resume and not cfg.output_dir:
        raise ConfigError("resume=true: needs output-dir, the folder of the run to continue")
    if cfg.llm.backend == "openai" and not cfg.llm.base_url:
        raise ConfigError("llm.base-url='': must be set when llm.backend='openai'")


def _walk(obj: Any, prefix: str = ""):
    """Yield ``(dotted_path, field, value)`` for every leaf option."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        path = f"{prefix}{f.name}"
        if is_dataclass(value):
            yield from _walk(value, path + ".")
        else:
            yield path, f, value


def defaults() -> FdktConfig:
    return FdktConfig()


def to_run_config(cfg: FdktConfig) -> dict[str, bool | int | float | str]:
    """Flatten to Flower's run-config form: ``{"dataset.private-size": 128, ...}``."""
    return {flower_key(path): value for path, _, value in _walk(cfg)}


def from_flat(flat: Mapping[str, Any], *, strict: bool = True) -> FdktConfig:
    """Build and validate a config from flat keys (hyphen or underscore spelling).

    Missing keys take their defaults; with ``strict`` an unknown key is an error (a typo must
    not silently fall back to a default).
    """
    cfg = FdktConfig()
    known = {flower_key(path): (path, f) for path, f, _ in _walk(cfg)}
    for raw_key, value in flat.items():
        key = flower_key(raw_key)
        if key not in known:
            if strict:
                raise ConfigError(f"{raw_key}: unknown setting (see the README's configuration "
                                  "table)")
            continue
        path, f = known[key]
        *parents, leaf = path.split(".")
        target = cfg
        for p in parents:
            target = getattr(target, p)
        setattr(target, leaf, _coerce(key, value, _field_type(f)))
    _validate(cfg)
    return cfg


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"privacy": {"epsilon": 3}}`` -> ``{"privacy.epsilon": 3}`` (how Flower flattens)."""
    flat: dict[str, Any] = {}
    for k, v in nested.items():
        if isinstance(v, Mapping):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def from_nested(nested: Mapping[str, Any]) -> FdktConfig:
    """Build from a nested mapping (Hydra/OmegaConf container or ``asdict`` output)."""
    return from_flat(flatten(nested))


def to_nested(cfg: FdktConfig) -> dict[str, Any]:
    return asdict(cfg)


def option_table() -> list[tuple[str, Any, str]]:
    """``(run-config key, default, help)`` for every option; the README's table comes from it."""
    rows = []
    for path, f, value in _walk(FdktConfig()):
        help_ = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            help_ += f" ({' / '.join(map(str, f.metadata['choices']))})"
        rows.append((flower_key(path), value, help_))
    return rows


# --------------------------------------------------------------------------- pyproject mirror

_BEGIN = "# >>> generated by `python -m fdkt_flwr.config --write-pyproject`; do not edit by hand"
_END = "# <<< end of generated run config"


def toml_value(v: Any) -> str:
    """A TOML literal for a run-config value (pyproject, ``--run-config``, node configs)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def pyproject_block() -> str:
    lines = [_BEGIN, "[tool.flwr.app.config]"]
    for key, default, _ in option_table():
        lines.append(f"{key} = {toml_value(default)}")
    lines.append(_END)
    return "\n".join(lines) + "\n"


def write_pyproject(path: Path) -> bool:
    """Rewrite the generated block in ``path``; return True if the file changed."""
    text = path.read_text()
    start, end = text.index(_BEGIN), text.index(_END) + len(_END) + 1
    new = text[:start] + pyproject_block() + text[end:]
    if new != text:
        path.write_text(new)
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-pyproject", type=Path, nargs="?",
                    const=Path(__file__).resolve().parent.parent / "pyproject.toml")
    ap.add_argument("--table", action="store_true", help="print the options as markdown")
    args = ap.parse_args(argv)
    if args.write_pyproject:
        changed = write_pyproject(args.write_pyproject)
        print(f"{args.write_pyproject}: {'updated' if changed else 'up to date'}")
    if args.table:
        print("| key | default | meaning |\n| --- | --- | --- |")
        for key, default, help_ in option_table():
            print(f"| `{key}` | `{toml_value(default)}` | {help_} |")
    return 0


def _fields_have_defaults() -> None:  # pragma: no cover - import-time sanity
    for _, f, _ in _walk(FdktConfig()):
        assert f.default is not MISSING


_fields_have_defaults()

if __name__ == "__main__":
    sys.exit(main())
