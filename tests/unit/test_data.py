"""Datasets and partitions: registry, local files, errors, determinism."""

from __future__ import annotations

import pandas as pd
import pytest

from fdkt_flwr.config import ConfigError, DatasetConfig
from fdkt_flwr.data import client_data, load_source


def _csv(tmp_path, n=60, text="body", label="topic"):
    rows = [{text: f"sample number {i} about {'cats' if i % 3 else 'dogs'}",
             label: "cats" if i % 3 else "dogs", "other": i} for i in range(n)]
    path = tmp_path / "pets.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_fine_food_is_the_shipped_split_with_label_names():
    src = load_source("fine-food")
    assert len(src.train) == 4000 and len(src.test) == 1000
    assert src.label_names == ["other", "great"]
    assert src.train.label_counts(2) == [1400, 2600]


def test_csv_with_its_own_column_names(tmp_path):
    path = _csv(tmp_path)
    cfg = DatasetConfig(name=str(path), text_column="body", label_column="topic",
                        private_size=10, test_size=5)
    a = client_data(cfg, 0, 2, seed=1)
    assert a.label_names == ["cats", "dogs"]
    assert len(a.private) == 10 and len(a.test) == 5
    assert all(t.startswith("sample number") for t in a.private.texts)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"text_column": "missing"}, "dataset.text-column='missing': no such column in pets.csv"),
    ({"label_column": "nope"}, "dataset.label-column='nope': no such column in pets.csv"),
])
def test_missing_columns_fail_in_one_line(tmp_path, overrides, message):
    path = _csv(tmp_path)
    cfg = DatasetConfig(name=str(path), **{"text_column": "body", "label_column": "topic",
                                           **overrides})
    with pytest.raises(ConfigError) as err:
        client_data(cfg, 0, 2, seed=0)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_source(str(tmp_path / "absent.csv"))
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_source("no-such-dataset")


def test_private_size_larger_than_partition(tmp_path):
    path = _csv(tmp_path)
    cfg = DatasetConfig(name=str(path), text_column="body", label_column="topic",
                        private_size=1000)
    with pytest.raises(ConfigError, match=r"dataset.private-size=1000: client 0's partition"):
        client_data(cfg, 0, 2, seed=0)


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet"])
def test_partitions_are_deterministic_and_disjoint(partitioner):
    cfg = DatasetConfig(partitioner=partitioner, private_size=0, test_size=0)
    parts = [client_data(cfg, pid, 3, seed=0) for pid in range(3)]
    again = client_data(cfg, 1, 3, seed=0)
    assert again.private.texts == parts[1].private.texts
    # The corpus repeats a few reviews verbatim, so compare multisets, not sets.
    from collections import Counter

    together = Counter(t for p in parts for t in p.private.texts)
    assert together == Counter(load_source("fine-food").train.texts)


def test_different_seeds_give_different_private_samples():
    cfg = DatasetConfig(private_size=32)
    assert client_data(cfg, 0, 3, seed=0).private.texts != \
        client_data(cfg, 0, 3, seed=1).private.texts
