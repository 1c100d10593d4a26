"""Unit tests of fdkt_flwr.generator on tiny random-init models (no downloads).

Tiny Llama (2 layers, hidden 32, tied embeddings) and GPT-2 (2 layers, n_embd 32, Conv1D)
with a byte-level BPE tokenizer trained in-process on a few sentences.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from opacus.optimizers.optimizer import DPOptimizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from fdkt_flwr import generator as gen
from fdkt_flwr.generator import (
    DROP_REASONS,
    GeneratorTrainConfig,
    clean_demonstrations,
    encode_example,
    make_poisson_loader,
    per_example_lm_loss,
    sample_demonstrations,
    strip_control_codes,
    train_dp_generator,
)
from fdkt_flwr.privacy import (
    NON_PRIVATE_MODE,
    BudgetExceededError,
    PrivacyError,
    PrivacyLedger,
    PrivacySpec,
    Release,
    compute_epsilon,
)
from tests.tiny import tiny_gpt2, tiny_llama

CODES = {0: "Domain: health | Rating: 1", 1: "Domain: health | Rating: 5"}
TEXTS = [
    "the clinic was clean and quick",
    "waited two hours and nobody called me",
    "my doctor was kind and listened",
    "cold room, rude staff, never again",
    "great nurses and a short wait",
    "billing was a mess for months",
    "they explained every step clearly",
    "lost my test results twice",
]
LABELS = [1, 0, 1, 0, 1, 0, 1, 0]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # 2 shared cores: intra-op threads only add contention for models this small.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _tokenizer(bos: bool, pad: bool = True) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXTS + list(CODES.values()), trainer)
    if bos:  # Llama-style: the tokenizer adds BOS itself
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 1)]
        )
    kwargs = {"pad_token": "<pad>"} if pad else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", **kwargs
    )


@pytest.fixture(scope="module")
def llama_tok() -> PreTrainedTokenizerFast:
    return _tokenizer(bos=True)


@pytest.fixture(scope="module")
def gpt2_tok() -> PreTrainedTokenizerFast:
    # GPT-2 style: no BOS added, no pad token (pad falls back to eos).
    return _tokenizer(bos=False, pad=False)




def _data(repeat: int = 1) -> tuple[list[str], list[str]]:
    texts = TEXTS * repeat
    codes = [CODES[y] for y in LABELS] * repeat
    return texts, codes


def _cfg(**kw) -> GeneratorTrainConfig:
    base = {
        "lora_rank": 4,
        "epochs": 1,
        "batch_size": 4,
        "max_physical_batch_size": 4,
        "learning_rate": 1e-2,
        "max_length": 24,
        "seed": 0,
    }
    base.update(kw)
    return GeneratorTrainConfig(**base)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class ClipRecorder:
    """Spies on Opacus' DPOptimizer.clip_and_accumulate.

    Per physical batch it records the raw per-example gradient norms, and the norm of what
    clipping actually added to ``summed_grad`` (with one example per physical batch, that
    is exactly that example's clipped gradient). It also records whether the physical batch
    ended a logical batch, to reconstruct the Poisson logical batch sizes.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.raw: list[float] = []
        self.clipped: list[float] = []
        self.physical: list[tuple[int, bool]] = []
        self.max_grad_norms: set[float] = set()
        original = DPOptimizer.clip_and_accumulate
        rec = self

        def spy(opt: DPOptimizer) -> None:
            gs = opt.grad_samples
            n = len(gs[0])
            before = [
                p.summed_grad.clone() if p.summed_grad is not None else torch.zeros_like(p)
                for p in opt.params
            ]
            final = not opt._check_skip_next_step(pop_next=False)
            original(opt)
            rec.physical.append((n, final))
            rec.max_grad_norms.add(opt.max_grad_norm)
            if n == 1:
                raw = torch.stack([g.reshape(1, -1).norm(dim=1) for g in gs], dim=1).norm()
                added = torch.sqrt(
                    sum(
                        ((p.summed_grad - b) ** 2).sum()
                        for p, b in zip(opt.params, before, strict=True)
                    )
                )
                rec.raw.append(float(raw))
                rec.clipped.append(float(added))

        monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", spy)

    def logical_sizes(self) -> list[int]:
        sizes, cur = [], 0
        for n, final in self.physical:
            cur += n
            if final:
                sizes.append(cur)
                cur = 0
        return sizes


# ------------------------------------------------------------------------- encoding/loss
def test_encoding_masks_prefix_and_padding_but_keeps_eos(gpt2_tok) -> None:
    ids, plen = encode_example(gpt2_tok, CODES[1], TEXTS[0], max_length=64)
    assert ids[-1] == gpt2_tok.eos_token_id
    assert ids[:plen] == gen.prompt_ids(gpt2_tok, CODES[1])
    short, _ = encode_example(gpt2_tok, CODES[0], "ok", max_length=64)
    collate = gen._make_collate(gen._pad_id(gpt2_tok))  # pad == eos for this tokenizer
    _, attention, labels = collate(
        [(torch.tensor(ids), torch.tensor(plen)), (torch.tensor(short), torch.tensor(plen))]
    )
    assert attention[1].sum() == len(short)
    assert (labels[1, len(short) :] == -100).all()  # padding ignored
    assert (labels[:, :plen] == -100).all()  # control-code prefix ignored
    assert labels[0, len(ids) - 1] == gpt2_tok.eos_token_id  # real eos is a target
    assert labels[1, len(short) - 1] == gpt2_tok.eos_token_id
    with pytest.raises(ValueError, match="max-length"):
        encode_example(gpt2_tok, CODES[0], "x", max_length=4)


def test_llama_prompt_starts_with_bos(llama_tok) -> None:
    ids = gen.prompt_ids(llama_tok, CODES[0])
    assert ids[0] == llama_tok.bos_token_id and ids[-1] != llama_tok.eos_token_id


def test_loss_ignores_padding(llama_tok) -> None:
    model = tiny_llama(len(llama_tok)).eval()
    collate = gen._make_collate(gen._pad_id(llama_tok))
    items = [
        tuple(map(torch.tensor, encode_example(llama_tok, CODES[y], t, 64)))
        for t, y in zip(TEXTS[:3], LABELS[:3], strict=True)
    ]
    with torch.no_grad():
        batch = collate(items)
        together = per_example_lm_loss(gen._forward_logits(model, *batch[:2]), batch[2])
        alone = torch.cat(
            [
                per_example_lm_loss(gen._forward_logits(model, *b[:2]), b[2])
                for b in (collate([it]) for it in items)
            ]
        )
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- Poisson
def test_poisson_loader_varies_batch_sizes_and_yields_exact_steps(llama_tok) -> None:
    encoded = [
        encode_example(llama_tok, CODES[y], t, 32) for t, y in zip(TEXTS, LABELS, strict=True)
    ]
    ds = gen._EncodedTexts(encoded * 4)  # N = 32
    collate = gen._make_collate(0)
    # 1/93 is a rate where Opacus' own int(1/q) batch count is off by one.
    for q, steps in [(0.25, 40), (1 / 93, 93)]:
        loader = make_poisson_loader(ds, q, steps, collate, torch.Generator().manual_seed(0))
        sizes = [len(b[0]) for b in loader]
        assert len(sizes) == steps
        assert len(set(sizes)) > 1
    assert 0 in sizes  # q = 1/93 with N = 32: empty batches happen


# --------------------------------------------------------------------------- clipping
@pytest.mark.parametrize(
    ("arch", "rank", "max_grad_norm"),
    [("llama", 4, 0.1), ("gpt2", 0, 3.0)],
)
def test_per_example_clipping_uses_configured_norm(
    monkeypatch, llama_tok, gpt2_tok, arch: str, rank: int, max_grad_norm: float
) -> None:
    """Each example's clipped gradient has norm min(raw, C) for the configured C.

    Raw norms are ~0.25 (Llama LoRA) and ~2.3-3.1 (GPT-2 full): with C = 0.1 every example
    is clipped, with C = 3.0 some are and some are not; a clipping norm of 1.0 (the old
    port's hard-coded value) would fail both.
    """
    rec = ClipRecorder(monkeypatch)
    tok = llama_tok if arch == "llama" else gpt2_tok
    model = tiny_llama(len(tok)) if arch == "llama" else tiny_gpt2(len(tok))
    spec = PrivacySpec(50.0, 1e-3, max_grad_norm, noise_multiplier=1.0, accountant="rdp")
    ledger = PrivacyLedger.for_spec(spec)
    texts, codes = _data()
    _, report = train_dp_generator(
        model, tok, texts, codes, spec, ledger, _cfg(lora_rank=rank, max_physical_batch_size=1)
    )
    assert rec.max_grad_norms == {max_grad_norm}
    assert report.max_grad_norm == max_grad_norm
    assert len(rec.raw) >= 3
    for raw, clipped in zip(rec.raw, rec.clipped, strict=True):
        assert clipped <= max_grad_norm * (1 + 1e-5)
        assert clipped == pytest.approx(min(raw, max_grad_norm), rel=1e-3)
    if max_grad_norm == 3.0:
        assert min(rec.raw) > 1.0  # the test would catch a norm of 1.0
    # Accounting matches what ran: one step per logical batch.
    assert len(rec.logical_sizes()) == report.steps


def test_dp_training_poisson_batches_empty_batches_and_exact_steps(monkeypatch, llama_tok):
    """q = 1/8 on N = 8: logical batches vary in size, some are empty (noise-only steps),
    and exactly `steps` steps are taken and accounted."""
    rec = ClipRecorder(monkeypatch)
    spec = PrivacySpec(50.0, 1e-3, 1.0, noise_multiplier=1.0, accountant="rdp")
    ledger = PrivacyLedger.for_spec(spec)
    texts, codes = _data()
    _, report = train_dp_generator(
        tiny_llama(len(llama_tok)),
        llama_tok,
        texts,
        codes,
        spec,
        ledger,
        _cfg(batch_size=1, epochs=2, max_physical_batch_size=2),
    )
    sizes = rec.logical_sizes()
    assert report.sample_rate == pytest.approx(1 / 8)
    assert report.steps == 16 == len(sizes)
    assert len(set(sizes)) > 1
    assert 0 in sizes
    assert ledger.history == [(1.0, 1 / 8, 16)]


# ------------------------------------------------------------------------- training
@pytest.mark.parametrize(("arch", "rank"), [("llama", 0), ("llama", 4), ("gpt2", 0), ("gpt2", 4)])
def test_dp_training_works_and_returns_plain_model(
    llama_tok, gpt2_tok, arch: str, rank: int, caplog, capsys
) -> None:
    tok = llama_tok if arch == "llama" else gpt2_tok
    model = tiny_llama(len(tok)) if arch == "llama" else tiny_gpt2(len(tok))
    cls = type(model)
    before = _weights(model)
    spec = PrivacySpec(4.0, 1e-3, 1.0, accountant="rdp")
    ledger = PrivacyLedger.for_spec(spec)
    lines: list[str] = []
    texts, codes = _data()
    # q = 1 (batch_size = N) keeps RDP calibration instant (closed form); Poisson sampling
    # at q < 1 is covered by the tests above.
    cfg = _cfg(lora_rank=rank, batch_size=8, epochs=2)
    trained, report = train_dp_generator(
        model, tok, texts, codes, spec, ledger, cfg, progress=lines.append
    )
    assert type(trained) is cls  # unwrapped: no GradSampleModule, no PeftModel
    after = trained.state_dict()
    assert not any("_module" in k or "lora_" in k for k in after)
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed
    emb_key = next(k for k in before if k.endswith(("wte.weight", "embed_tokens.weight")))
    assert torch.equal(trained.get_input_embeddings().weight, before[emb_key])  # frozen
    assert not trained.training
    # Report and ledger: one release, σ calibrated so the budget is spent (within 1%).
    assert report.private and report.mode == "dp-sgd"
    assert report.num_examples == 8 and report.steps == 2 and report.sample_rate == 1.0
    assert 0.99 * 4.0 <= report.epsilon <= 4.0
    assert report.epsilon == compute_epsilon([(report.noise_multiplier, 1.0, 2)], spec.delta, "rdp")
    assert len(ledger.releases) == 1 and ledger.spent() == report.epsilon
    # The generator can sample right away.
    out = sample_demonstrations(trained, tok, CODES, 1, max_new_tokens=4, batch_size=2)
    assert len(out) == 2
    # Never private text in logs, progress or output.
    logged = "\n".join(lines) + caplog.text + capsys.readouterr().out
    assert lines
    assert not any(t in logged for t in TEXTS)


def test_ghost_clipping(llama_tok, gpt2_tok) -> None:
    spec = PrivacySpec(50.0, 1e-3, 1.0, noise_multiplier=1.0, accountant="rdp")
    texts, codes = _data()
    ledger = PrivacyLedger.for_spec(spec)
    trained, report = train_dp_generator(
        tiny_llama(len(llama_tok)),
        llama_tok,
        texts,
        codes,
        spec,
        ledger,
        _cfg(grad_sample_mode="ghost", max_physical_batch_size=2),
    )
    assert isinstance(trained, LlamaForCausalLM) and report.steps == 2
    # GPT-2 full fine-tuning cannot use ghost clipping: refused up front, nothing spent.
    ledger = PrivacyLedger.for_spec(spec)
    with pytest.raises(ValueError, match="ghost"):
        train_dp_generator(
            tiny_gpt2(len(gpt2_tok)),
            gpt2_tok,
            texts,
            codes,
            spec,
            ledger,
            _cfg(grad_sample_mode="ghost", lora_rank=0),
        )
    assert ledger.releases == []


def test_dp_training_is_deterministic_under_seed(llama_tok) -> None:
    spec = PrivacySpec(50.0, 1e-3, 1.0, noise_multiplier=1.0, accountant="rdp")
    texts, codes = _data()
    runs = []
    for seed in (0, 0, 1):
        trained, _ = train_dp_generator(
            tiny_llama(len(llama_tok)),
            llama_tok,
            texts,
            codes,
            spec,
            PrivacyLedger.for_spec(spec),
            _cfg(seed=seed),
        )
        runs.append(_weights(trained))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


@pytest.mark.parametrize("epsilon", [50.0, math.inf], ids=["dp", "non-private"])
def test_heap_trim_runs_once_per_logical_step_and_changes_no_result(
    monkeypatch, llama_tok, epsilon: float
) -> None:
    spec = (PrivacySpec(epsilon, 1e-3, 1.0, noise_multiplier=1.0, accountant="rdp")
            if math.isfinite(epsilon) else PrivacySpec(epsilon, 1e-3, 1.0))
    texts, codes = _data()
    calls = []
    monkeypatch.setattr(gen, "trim_heap", lambda: calls.append(1) or True)
    runs = []
    for trim in (True, False):
        calls.clear()
        trained, _ = train_dp_generator(
            tiny_llama(len(llama_tok)), llama_tok, texts, codes, spec,
            PrivacyLedger.for_spec(spec), _cfg(trim_heap=trim, max_physical_batch_size=2))
        runs.append((_weights(trained), len(calls)))
    (with_trim, n_trim), (without, n_none) = runs
    assert n_none == 0
    assert n_trim == 2  # one per logical step: 8 examples, batch 4, one epoch
    assert all(torch.equal(with_trim[k], without[k]) for k in with_trim)


def test_non_private_mode_adds_no_noise(monkeypatch, llama_tok) -> None:
    import opacus

    def no_engine(*args, **kwargs):
        raise AssertionError("non-private mode must not use Opacus")

    monkeypatch.setattr(opacus, "PrivacyEngine", no_engine)
    monkeypatch.setattr(DPOptimizer, "add_noise", no_engine)
    spec = PrivacySpec(math.inf, 1e-3, 1.0)
    texts, codes = _data()
    runs, reports = [], []
    for _ in range(2):
        ledger = PrivacyLedger.for_spec(spec)
        trained, report = train_dp_generator(
            tiny_llama(len(llama_tok)),
            llama_tok,
            texts,
            codes,
            spec,
            ledger,
            _cfg(max_physical_batch_size=3),
        )
        runs.append(_weights(trained))
        reports.append(report)
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    r = reports[0]
    assert not r.private and r.mode == NON_PRIVATE_MODE
    assert r.noise_multiplier == 0.0 and r.epsilon == math.inf
    assert r.to_dict()["mode"].startswith("non-private")
    assert ledger.history == [(0.0, 0.5, 2)]


def test_over_budget_release_is_refused_before_training(llama_tok) -> None:
    spec = PrivacySpec(1.0, 1e-3, 1.0, noise_multiplier=0.3, accountant="rdp")
    ledger = PrivacyLedger.for_spec(spec)
    model = tiny_llama(len(llama_tok))
    before = _weights(model)
    texts, codes = _data()
    with pytest.raises(BudgetExceededError, match="nothing was spent"):
        train_dp_generator(model, llama_tok, texts, codes, spec, ledger, _cfg())
    assert ledger.releases == []
    after = model.state_dict()
    assert set(after) == set(before)  # no adapters attached
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing trained


def test_second_release_spends_what_is_left(llama_tok) -> None:
    spec = PrivacySpec(4.0, 1e-3, 1.0, accountant="rdp")
    ledger = PrivacyLedger.for_spec(spec)
    ledger.record(Release(3.0, 1.0, 2, "round-1"))
    first = ledger.spent()
    texts, codes = _data()
    _, report = train_dp_generator(
        tiny_llama(len(llama_tok)),
        llama_tok,
        texts,
        codes,
        spec,
        ledger,
        _cfg(batch_size=8),
        label="round-2",
    )
    assert report.label == "round-2" and len(report.history) == 2
    assert [r.label for r in ledger.releases] == ["round-1", "round-2"]
    assert first < report.epsilon <= 4.0
    assert report.epsilon >= 0.99 * 4.0
    assert report.release_epsilon < report.epsilon


def test_spec_must_match_ledger(llama_tok) -> None:
    texts, codes = _data()
    with pytest.raises(PrivacyError, match="ledger"):
        train_dp_generator(
            tiny_llama(len(llama_tok)),
            llama_tok,
            texts,
            codes,
            PrivacySpec(8.0, 1e-3, 1.0),
            PrivacyLedger(4.0, 1e-3),
            _cfg(),
        )


def test_config_validation() -> None:
    with pytest.raises(ValueError, match=r"generator\.grad-sample-mode='x'"):
        GeneratorTrainConfig(grad_sample_mode="x")
    with pytest.raises(ValueError, match=r"generator\.batch-size=0"):
        GeneratorTrainConfig(batch_size=0)


# -------------------------------------------------------------------------- sampling
def _sampler_model(tok: PreTrainedTokenizerFast) -> Callable[..., list[tuple[str, int]]]:
    model = tiny_gpt2(len(tok)).eval()
    return lambda **kw: sample_demonstrations(
        model, tok, CODES, kw.pop("n", 5), max_new_tokens=6, batch_size=3, **kw
    )


def test_sample_demonstrations_equal_counts_and_deterministic(gpt2_tok) -> None:
    sample = _sampler_model(gpt2_tok)
    a = sample(seed=3)
    assert [lab for _, lab in a] == [0] * 5 + [1] * 5
    assert a == sample(seed=3)
    assert a != sample(seed=4)
    assert sample(n=0, seed=0) == []
    greedy = sample(n=2, seed=0, temperature=0.0)
    assert greedy[0] == greedy[1]


# -------------------------------------------------------------------------- cleaning
def test_strip_control_codes() -> None:
    codes = list(CODES.values())
    assert strip_control_codes(f"{CODES[1]}\n  great   care\n", codes) == "great care"
    assert strip_control_codes("Rating: 5\ngreat care", codes) == "great care"
    assert strip_control_codes(f"great care {CODES[0]} awful", codes) == "great care"
    assert strip_control_codes("plain text", codes) == "plain text"


def test_clean_demonstrations_counts_every_drop_reason() -> None:
    long_ok = "the nurse explained the treatment plan in detail"
    samples = [
        (long_ok, 1),
        ("short", 1),  # too_short
        ("x" * 300, 0),  # too_long
        ("bad " * 12, 0),  # repetitive
        (long_ok.upper(), 0),  # duplicate (case-insensitive)
        ("the nurse explained the treatment plan in detail!", 1),  # near_duplicate
        (f"{CODES[0]}\nthe parking lot was full and the wait was long", 0),
        ("billing sent me three different invoices for one visit", 0),
    ]
    kept, drops = clean_demonstrations(
        samples, CODES, min_chars=20, max_chars=200, near_dup_threshold=0.8
    )
    assert set(drops) == set(DROP_REASONS)
    assert drops == {
        "too_short": 1,
        "too_long": 1,
        "repetitive": 1,
        "duplicate": 1,
        "near_duplicate": 1,
    }
    assert kept == [
        (long_ok, 1),
        ("the parking lot was full and the wait was long", 0),
        ("billing sent me three different invoices for one visit", 0),
    ]
    assert len(kept) + sum(drops.values()) == len(samples)


def test_near_duplicate_threshold() -> None:
    a = "the staff were friendly and the rooms were spotless"
    b = "the staff were friendly and the rooms were spotless today"
    kept, drops = clean_demonstrations([(a, 0), (b, 0)], CODES, near_dup_threshold=0.8)
    assert kept == [(a, 0)] and drops["near_duplicate"] == 1
    kept, drops = clean_demonstrations([(a, 0), (b, 0)], CODES, near_dup_threshold=0.99)
    assert len(kept) == 2 and drops["near_duplicate"] == 0


def test_clean_demonstrations_takes_no_private_data() -> None:
    import inspect

    params = set(inspect.signature(clean_demonstrations).parameters)
    assert params.isdisjoint({"texts", "private", "private_texts", "reference"})


def test_half_precision_model_trains_in_fp32_and_comes_back_in_its_dtype(llama_tok) -> None:
    spec = PrivacySpec(50.0, 1e-3, 1.0, noise_multiplier=1.0, accountant="rdp")
    texts, codes = _data()
    seen: list[torch.dtype] = []
    model = tiny_llama(len(llama_tok)).to(torch.bfloat16)
    trained, _ = train_dp_generator(
        model, llama_tok, texts, codes, spec, PrivacyLedger.for_spec(spec), _cfg(),
        progress=lambda _msg: seen.append(next(model.parameters()).dtype),
    )  # fmt: skip
    assert seen and seen[0] == torch.float32  # clipping and noise happened in fp32
    assert next(trained.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_left_padding_does_not_change_samples(arch: str, llama_tok, gpt2_tok) -> None:
    """A short prompt batched with a long one (so left-padded) decodes as it does alone."""
    tok = llama_tok if arch == "llama" else gpt2_tok
    model = (tiny_llama if arch == "llama" else tiny_gpt2)(len(tok)).eval()
    with torch.no_grad():  # large random weights: varied greedy output, not "\n\n\n"
        gen_ = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen_) * 0.5)
    codes = {0: "Domain: x", 1: "Domain: health | Rating: 5 | a much longer control code"}
    both = sample_demonstrations(model, tok, codes, 1, max_new_tokens=8, temperature=0.0)
    alone = sample_demonstrations(model, tok, {0: codes[0]}, 1, max_new_tokens=8, temperature=0.0)
    assert both[0] == alone[0]
    assert len(set(both[0][0])) > 1
