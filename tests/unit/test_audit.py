"""Unit tests of the canary audit (fdkt_flwr.audit) on a tiny random-init Llama."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from fdkt_flwr import audit
from fdkt_flwr.audit import (
    count_leaks,
    exposure,
    format_table,
    random_secrets,
    run_audit,
    sequence_log_likelihoods,
)
from fdkt_flwr.generator import (
    GeneratorTrainConfig,
    _forward_logits,
    _make_collate,
    encode_example,
    per_example_lm_loss,
)
from tests.tiny import tiny_llama as _tiny_llama

TEXTS = [
    "the clinic was clean and quick",
    "waited two hours and nobody called me",
    "my doctor was kind and listened",
    "cold room, rude staff, never again",
] * 2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    t.train_from_iterator([*TEXTS, "the secret code is 1 2 3"], trainer)
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def tiny_llama(vocab: int):
    # Untied embeddings: with full fine-tuning the (untied) LM head trains, so this tiny
    # model can memorise within a few dozen steps.
    return _tiny_llama(vocab, tie=False, max_positions=96)


# ------------------------------------------------------------------------ exposure math
def test_exposure_extremes_and_middle() -> None:
    others = [float(-i) for i in range(1, 64)]  # 63 candidates, |R| = 64
    assert exposure(0.0, others) == (6.0, 1)  # most likely: log2(64) - log2(1)
    assert exposure(-100.0, others) == (0.0, 64)  # least likely
    exp, rank = exposure(-15.5, others)  # 15 candidates above it
    assert rank == 16 and exp == pytest.approx(6 - 4)
    exp, rank = exposure(-1.0, others)  # one tie: expected rank under random tie breaking
    assert rank == 1.5 and exp == pytest.approx(6 - math.log2(1.5))


def test_count_leaks() -> None:
    samples = ["The  secret code is 1 2\n3 ok", "the secret code is 9", "nothing"]
    assert count_leaks(samples, "1 2 3", audit.CANARY_TEMPLATE) == (1, 2)


def test_random_secrets_distinct_and_excluding() -> None:
    rng = random.Random(0)
    got = random_secrets(50, 3, rng, {"1 2 3"})
    assert len(set(got)) == 50 and "1 2 3" not in got
    assert all(len(s.split()) == 3 and s.replace(" ", "").isdigit() for s in got)
    with pytest.raises(ValueError):
        random_secrets(10, 1, rng, {"0"})


def test_log_likelihood_matches_training_loss_and_ignores_batching(tok) -> None:
    model = tiny_llama(len(tok)).eval()
    code = "Domain: audit"
    texts = ["the secret code is 1 2 3", "the clinic was clean", "no"]
    a = sequence_log_likelihoods(model, tok, code, texts, batch_size=3)
    b = sequence_log_likelihoods(model, tok, code, texts, batch_size=1)
    assert a == pytest.approx(b, rel=1e-4)
    # Σ log p = −(mean per-token loss) × (number of scored tokens).
    collate = _make_collate(0)
    items = [tuple(map(torch.tensor, encode_example(tok, code, t, 512))) for t in texts]
    with torch.no_grad():
        ids, att, labels = collate(items)
        loss = per_example_lm_loss(_forward_logits(model, ids, att), labels)
    counts = (labels[:, 1:] != -100).sum(dim=1)
    assert a == pytest.approx((-loss * counts).tolist(), rel=1e-4)


# --------------------------------------------------------------------------- run_audit
def test_run_audit_non_private_memorises_and_dp_runs(tok) -> None:
    cfg = GeneratorTrainConfig(
        lora_rank=0,
        epochs=60,
        batch_size=16,
        max_physical_batch_size=16,
        learning_rate=3e-2,
        max_length=64,
    )
    rows = run_audit(
        lambda: (tiny_llama(len(tok)), tok),
        TEXTS,
        [math.inf, 1.0],
        repeats=8,
        num_candidates=63,
        accountant="rdp",
        delta=1e-3,
        train_cfg=cfg,
        samples_per_label=2,
        max_new_tokens=40,
        temperature=0.0,  # greedy: the memorised canary is the most likely continuation
    )
    inf_row, dp_row = rows
    assert inf_row["max_exposure"] == 6.0
    # Non-private training on 8 copies memorises the canary: top rank among the candidates,
    # and greedy sampling reproduces its template (this tiny model gets digits wrong).
    assert inf_row["exposure"] >= 5.0
    assert inf_row["samples_with_template"] >= 1
    assert not inf_row["private"] and inf_row["epsilon_spent"] == math.inf
    # The DP run is accounted as asked.
    assert dp_row["private"] and 0.99 <= dp_row["epsilon_spent"] <= 1.0
    assert dp_row["noise_multiplier"] > 1.0
    assert 0.0 <= dp_row["exposure"] <= dp_row["max_exposure"]
    assert inf_row["canary"] == dp_row["canary"]  # same canary and candidates at every ε
    assert inf_row["exposure_before"] == dp_row["exposure_before"]
    table = format_table(rows)
    assert "exposure" in table and len(table.splitlines()) == 4


def test_run_audit_refuses_a_canary_longer_than_max_length(tok) -> None:
    with pytest.raises(ValueError, match="max-length"):
        run_audit(
            lambda: (tiny_llama(len(tok)), tok),
            TEXTS,
            [math.inf],
            num_candidates=3,
            train_cfg=GeneratorTrainConfig(max_length=8),
        )


def test_cli_writes_json_and_table(tok, tmp_path, monkeypatch, capsys) -> None:
    from fdkt_flwr import data, models, tasks

    labels = [0, 1] * 4
    source = data.Source(
        name="tiny",
        train=data.Split(TEXTS, labels),
        test=data.Split(TEXTS[:2], [0, 1]),
        label_names=["bad", "good"],
    )
    monkeypatch.setattr(data, "load_source", lambda name, **kw: source)
    monkeypatch.setattr(models, "load_causal_lm", lambda name, **kw: (tiny_llama(len(tok)), tok))
    monkeypatch.setattr(
        tasks, "load_task", lambda name, names, *a, **kw: tasks.TaskSpec("tiny", "x", names)
    )
    out = tmp_path / "audit.json"
    rc = audit.main(
        [
            "--epsilons", "inf,2",
            "--out", str(out),
            "--num-texts", "8",
            "--candidates", "7",
            "--epochs", "1",
            "--batch-size", "8",
            "--lora-rank", "0",
            "--accountant", "rdp",
            "--delta", "1e-3",
            "--samples-per-label", "1",
            "--max-new-tokens", "4",
        ]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "exposure" in printed
    assert not any(t in printed for t in TEXTS)  # never private text
    payload = json.loads(out.read_text())
    assert [r["target_epsilon"] for r in payload["results"]] == ["inf", 2.0]
