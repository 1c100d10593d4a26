"""The bad-input matrix: each case is a one-line error naming the problem and the fix, or is
survived and counted (issue 8). Cases covered in more depth elsewhere are repeated here in one
place so that the whole matrix reads as one table."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from flwr.app import Message

from fdkt_flwr.config import ConfigError, DatasetConfig, from_flat
from fdkt_flwr.data import client_data, load_source
from fdkt_flwr.llm import LLMError, ScriptedLLM
from fdkt_flwr.models import ModelNotFoundError, resolve_model
from fdkt_flwr.protocol import SYNTHESIZE, DemonstrationReply
from tests.unit.test_strategy import REVIEWS, TICKETS, FakeGrid, _strategy


def _write(tmp_path, rows, name="d.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def _rows(n=40, labels=("a", "b")):
    return [{"text": f"text number {i}", "label": labels[i % len(labels)]} for i in range(n)]


@pytest.mark.parametrize(("case", "make", "message"), [
    ("missing file", lambda t: DatasetConfig(name=str(t / "nope.csv")),
     "dataset.name='{t}/nope.csv': file not found"),
    ("missing text column", lambda t: DatasetConfig(name=_write(t, _rows()), text_column="body"),
     "dataset.text-column='body': no such column in d.csv (columns: text, label)"),
    ("missing label column", lambda t: DatasetConfig(name=_write(t, _rows()), label_column="y"),
     "dataset.label-column='y': no such column in d.csv (columns: text, label)"),
    ("one class only", lambda t: DatasetConfig(name=_write(t, _rows(labels=("a",)))),
     "dataset.label-column='label': {t}/d.csv has 1 label value(s); classification needs at "
     "least 2"),
    ("private size larger than the data",
     lambda t: DatasetConfig(name=_write(t, _rows()), private_size=500),
     "dataset.private-size=500: client 0's partition has only 16 examples; lower it or use 0"),
    ("empty partition", lambda t: DatasetConfig(name=_write(t, _rows(n=6)), private_size=0),
     "dataset.name='{t}/d.csv': its train split has 4 example(s) for 5 clients, so some "
     "partitions would be empty"),
])
def test_data_errors_are_one_line(tmp_path, case, make, message):
    load_source.cache_clear()
    pid, n = (3, 5) if case == "empty partition" else (0, 2)
    with pytest.raises(ConfigError) as err:
        client_data(make(tmp_path), pid, n, seed=0)
    text = str(err.value)
    assert "\n" not in text, case
    assert text.startswith(message.format(t=tmp_path)), text


def test_label_sets_that_differ_between_train_and_test():
    from fdkt_flwr.data import _to_splits

    train = pd.DataFrame({"t": ["x", "y"], "l": ["a", "b"]})
    test = pd.DataFrame({"t": ["z"], "l": ["c"]})
    with pytest.raises(ConfigError, match="the test split has labels the train split lacks"):
        _to_splits(train, test, "t", "l", ["a", "b"])


@pytest.mark.parametrize(("setting", "message"), [
    ({"privacy.epsilon": 0.0}, "privacy.epsilon=0.0: must be > 0 (or inf for non-private)"),
    ({"privacy.epsilon": -3.0}, "privacy.epsilon=-3.0: must be > 0 (or inf for non-private)"),
    ({"privacy.delta": 0.0}, "privacy.delta=0.0: must be in (0, 1)"),
    ({"privacy.delta": 1.0}, "privacy.delta=1.0: must be in (0, 1)"),
    ({"privacy.max-grad-norm": -1.0}, "privacy.max-grad-norm=-1.0: must be > 0"),
    ({"baselines": "local,oracle"}, "baselines='local,oracle': must be a comma-separated "
                                    "subset of local, dp-synthetic, zero-shot"),
])
def test_setting_errors_are_one_line(setting, message):
    with pytest.raises(ConfigError) as err:
        from_flat(setting)
    assert str(err.value) == message


def test_unknown_model_offline_says_how_to_get_it():
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("gpt-17")
    assert "\n" not in str(err.value) and "local folder" in str(err.value)


def _grid_with_demos(demos_for: dict[int, list]):
    class Grid(FakeGrid):
        def send_and_receive(self, messages, timeout=None):
            out = []
            for m in messages:
                nid = m.metadata.dst_node_id
                if m.metadata.message_type == SYNTHESIZE and nid in demos_for:
                    rec = DemonstrationReply(client=f"c{nid}", task=self.tasks[nid],
                                             demos=demos_for[nid], privacy={"epsilon": 1.0}
                                             ).to_record()
                    out.append(Message(rec, reply_to=m))
                else:
                    out.extend(super().send_and_receive([m], timeout))
            return out

    return Grid


def test_all_demonstrations_filtered_out_is_counted_and_the_client_still_trains(tmp_path):
    strategy, results = _strategy(tmp_path)
    grid = _grid_with_demos({12: []})({11: REVIEWS, 12: TICKETS})
    strategy.start(grid, num_rounds=1, timeout=5)
    data = json.loads(results.path.read_text())
    assert grid.received[12] == [[]]  # a train request with no samples: private-only metrics
    assert "c12" in data["rounds"][0]["clients"]
    assert any("no DP demonstrations left" in f["reason"] for f in data["failures"])


def test_llm_answers_without_parseable_samples_are_counted(tmp_path):
    strategy, results = _strategy(tmp_path, llm=ScriptedLLM(["Sure! I cannot do that."]))
    grid = FakeGrid({11: REVIEWS, 12: TICKETS})
    strategy.start(grid, num_rounds=1, timeout=5)
    data = json.loads(results.path.read_text())
    stats = data["rounds"][0]["server"]["c11"]
    assert stats["sent"] == 0 and sum(stats["dropped"].values()) > 0
    assert grid.received[11] == [[]] or grid.received[11][0] == []


def test_llm_endpoint_errors_are_recorded_per_client_and_the_run_finishes(tmp_path):
    class Down:
        stats = None

        def generate(self, conversations, params):
            raise LLMError("LLM endpoint http://127.0.0.1:9/v1 failed after 3 tries: timeout")

    strategy, results = _strategy(tmp_path, llm=Down(), **{"selection.enabled": False})
    strategy.start(FakeGrid({11: REVIEWS, 12: TICKETS}), num_rounds=1, timeout=5)
    data = json.loads(results.path.read_text())
    reasons = [f["reason"] for f in data["failures"] if f["phase"] == "augment"]
    assert len(reasons) == 2 and all("failed after 3 tries" in r for r in reasons)
