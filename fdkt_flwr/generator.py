"""The client's DP generator: DP-SGD fine-tuning of a causal LM and DP demonstrations.

This is the only FDKT step that touches private data, so it is the only one that spends
privacy budget:

1. `train_dp_generator` fine-tunes a causal LM on ``control_code + "\\n" + text + eos``
   with DP-SGD (Opacus): Poisson sampling at an exact rate q, per-example clipping at
   ``spec.max_grad_norm``, Gaussian noise with σ calibrated for (q, steps) against the
   client's *remaining* budget (`PrivacyLedger`). The ledger refuses an over-budget
   release before anything is trained, and records the release afterwards.
2. `sample_demonstrations` prompts the DP model with each label's control code alone, the
   same number of times per label (post-processing: no further ε).
3. `clean_demonstrations` drops degenerate samples by looking at the samples only, never
   at private data (a filter that compared samples with private text would leak).

Nothing here logs or prints private text.
"""

from __future__ import annotations

import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from fdkt_flwr.config import GeneratorConfig as _RunGeneratorConfig
from fdkt_flwr.memory import trim_heap
from fdkt_flwr.privacy import (
    DP_MODE,
    NON_PRIVATE_MODE,
    PrivacyError,
    PrivacyLedger,
    PrivacyReport,
    PrivacySpec,
    Release,
    compute_epsilon,
    import_opacus,
)

logger = logging.getLogger(__name__)

GRAD_SAMPLE_MODES: tuple[str, ...] = ("hooks", "ghost")
IGNORE_INDEX = -100

ProgressFn = Callable[[str], None]
# Defaults of the settings that the run config exposes come from fdkt_flwr.config (one place).
_RUN = _RunGeneratorConfig()


@dataclass
class GeneratorTrainConfig:
    """Hyper-parameters of generator fine-tuning (privacy settings live in `PrivacySpec`).

    Attributes:
        lora_rank: LoRA rank on every attention/MLP linear layer; 0 = full fine-tuning
            (with token embeddings and normalisation layers frozen).
        lora_alpha: LoRA scaling numerator (default: 2 * lora_rank).
        epochs: expected passes over the data; the run takes ``ceil(epochs / q)`` steps.
        batch_size: expected (Poisson) logical batch size; sample rate q = batch_size / N.
        max_physical_batch_size: largest batch put through the model at once; larger
            logical batches are split into physical chunks. Memory grows with it, the work
            per logical step does not (``benchmarks/bench.py dp-batch``).
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        max_length: maximum tokens per example (control code + text + eos).
        seed: seeds Poisson sampling, the DP noise, dropout and LoRA initialisation.
        grad_sample_mode: ``"hooks"`` (default; any model) or ``"ghost"`` (ghost clipping,
            less memory; Llama-family models, and GPT-2 with LoRA).
        trim_heap: on the CPU, hand freed heap memory back to the OS after every logical
            step (:mod:`fdkt_flwr.memory`; ``benchmarks/bench.py dp-batch`` compares).
    """

    lora_rank: int = _RUN.lora_rank
    lora_alpha: float | None = None
    epochs: int = _RUN.epochs
    batch_size: int = _RUN.batch_size
    max_physical_batch_size: int = _RUN.max_physical_batch_size
    learning_rate: float = _RUN.learning_rate
    weight_decay: float = 0.0
    max_length: int = _RUN.max_length
    seed: int = 0
    grad_sample_mode: str = "hooks"
    trim_heap: bool = True

    def __post_init__(self) -> None:
        def bad(key: str, value: Any, rule: str) -> ValueError:
            return ValueError(f"generator.{key}={value!r}: {rule}")

        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise bad("lora-rank", self.lora_rank, "must be an integer >= 0 (0 = full fine-tuning)")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise bad("lora-alpha", self.lora_alpha, "must be > 0")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise bad("epochs", self.epochs, "must be an integer >= 1")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise bad("batch-size", self.batch_size, "must be an integer >= 1")
        if not isinstance(self.max_physical_batch_size, int) or self.max_physical_batch_size < 1:
            raise bad("max-physical-batch-size", self.max_physical_batch_size, "must be >= 1")
        if not self.learning_rate > 0:
            raise bad("learning-rate", self.learning_rate, "must be > 0")
        if not self.weight_decay >= 0:
            raise bad("weight-decay", self.weight_decay, "must be >= 0")
        if not isinstance(self.max_length, int) or self.max_length < 4:
            raise bad("max-length", self.max_length, "must be an integer >= 4")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise bad("grad-sample-mode", self.grad_sample_mode, "must be one of hooks, ghost")


# ----------------------------------------------------------------------------- encoding
def _eos_id(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token; the generator needs one to stop")
    return int(eos)


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else _eos_id(tokenizer)


def prompt_ids(tokenizer: Any, control_code: str) -> list[int]:
    """Token ids of the prompt for `control_code`: the tokenizer's own special prefix
    (e.g. BOS for Llama tokenizers) + ``control_code + "\\n"``.

    Training and sampling both use this, so the model is sampled from exactly the prefix it
    was trained on.
    """
    ids = list(tokenizer(control_code + "\n", add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    # Some tokenizers append EOS as a special token; a prompt must not end the sequence.
    while len(ids) > 1 and eos is not None and ids[-1] == eos:
        ids.pop()
    return ids


def encode_example(
    tokenizer: Any, control_code: str, text: str, max_length: int
) -> tuple[list[int], int]:
    """Render one private example as ``prompt_ids(control_code) + text + eos``.

    Returns ``(ids, prefix_len)``; the loss ignores the first ``prefix_len`` tokens (the
    control code is given at sampling time, so the model need not learn to predict it —
    and learning it would encode the label histogram). Texts are truncated to
    ``max_length`` tokens in total; eos is kept only when the whole text fits.
    """
    prefix = prompt_ids(tokenizer, control_code)
    if len(prefix) >= max_length:
        raise ValueError(
            f"generator.max-length={max_length}: too small for the control code prefix "
            f"({len(prefix)} tokens)"
        )
    body = [*tokenizer(text, add_special_tokens=False)["input_ids"], _eos_id(tokenizer)]
    ids = (prefix + body)[:max_length]
    return ids, len(prefix)


class _EncodedTexts(Dataset):
    """Pre-tokenised examples; items are ``(ids, prefix_len)`` tensors."""

    def __init__(self, encoded: list[tuple[list[int], int]]) -> None:
        self.items = [
            (torch.tensor(ids, dtype=torch.long), torch.tensor(plen, dtype=torch.long))
            for ids, plen in encoded
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.items[i]


def _make_collate(pad_id: int) -> Callable[[list], tuple[torch.Tensor, ...]]:
    def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        """Right-pad; labels are -100 on padding and on the control-code prefix."""
        t = max(len(ids) for ids, _ in items)
        b = len(items)
        input_ids = torch.full((b, t), pad_id, dtype=torch.long)
        attention = torch.zeros((b, t), dtype=torch.long)
        labels = torch.full((b, t), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, plen) in enumerate(items):
            n = len(ids)
            input_ids[i, :n] = ids
            attention[i, :n] = 1
            # Masks come from lengths, never from comparing with pad_id: pad may equal eos
            # (GPT-2), and the real eos must stay a target.
            labels[i, int(plen) : n] = ids[int(plen) :]
        return input_ids, attention, labels

    return collate


def make_poisson_loader(
    dataset: Dataset,
    sample_rate: float,
    steps: int,
    collate_fn: Callable[[list], Any],
    generator: torch.Generator,
) -> torch.utils.data.DataLoader:
    """Opacus' Poisson `DPDataLoader` at exactly `sample_rate`, yielding exactly `steps`
    logical batches (possibly empty: then a batch of zero-length tensors).

    Why not ``make_private(poisson_sampling=True)``: it derives q = 1/len(loader) and the
    number of batches as ``int(1/q)``, which loses one batch per epoch through float
    rounding for many sizes (``int(1/(1/93)) == 92``). Here q and steps are what the ledger
    accounts for, by construction.
    """
    import_opacus()
    from opacus.data_loader import DPDataLoader

    loader = DPDataLoader(
        dataset, sample_rate=sample_rate, collate_fn=collate_fn, generator=generator
    )
    loader.batch_sampler.steps = steps  # UniformWithReplacementSampler: number of batches
    return loader


# ------------------------------------------------------------------------ model surgery
def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm | nn.GroupNorm) or "Norm" in name


def _prepare_trainable(model: nn.Module, cfg: GeneratorTrainConfig) -> nn.Module:
    """Attach LoRA adapters (lora_rank > 0), or choose the fully fine-tuned parameters.

    LoRA targets every Linear / GPT-2 Conv1D layer except the output head (peft's
    "all-linear"); for Conv1D, peft needs ``fan_in_fan_out=True`` (its weight is stored
    transposed). Only the adapters train, and they are plain ``nn.Linear`` layers, which
    Opacus supports natively.

    Full fine-tuning freezes the token embeddings (tied to the LM head in SmolLM2 and GPT-2;
    Opacus cannot handle the two uses of one tied weight, and per-sample embedding grads
    are B x V x d) and every normalisation layer (Opacus has no per-sample rule for
    LlamaRMSNorm). The same choice is made in non-private mode, so the baseline trains the
    same parameters.
    """
    if cfg.lora_rank > 0:
        from peft import LoraConfig, get_peft_model
        from transformers.pytorch_utils import Conv1D

        has_conv1d = any(isinstance(m, Conv1D) for m in model.modules())
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha if cfg.lora_alpha is not None else 2 * cfg.lora_rank,
            lora_dropout=0.0,
            target_modules="all-linear",
            fan_in_fan_out=has_conv1d,
            bias="none",
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return get_peft_model(model, lora)

    for p in model.parameters():
        p.requires_grad_(True)
    frozen: list[nn.Parameter] = []
    emb_in = model.get_input_embeddings()
    if emb_in is not None:
        frozen += list(emb_in.parameters())
    emb_out = model.get_output_embeddings()
    if emb_out is not None and emb_in is not None and emb_out.weight is emb_in.weight:
        frozen += list(emb_out.parameters())
    for m in model.modules():
        if _is_norm(m):
            frozen += list(m.parameters(recurse=False))
    for p in frozen:
        p.requires_grad_(False)
    return model


def _finalize(model: nn.Module) -> nn.Module:
    """Return a plain transformers model (LoRA merged), in eval mode, no grads attached."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    for p in model.parameters():
        p.grad = None
        p.requires_grad_(False)
    model.eval()
    return model


def _trainable_params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _forward_logits(
    model: nn.Module, input_ids: torch.Tensor, attention: torch.Tensor
) -> torch.Tensor:
    b, t = input_ids.shape
    # Explicit per-example position ids: HF builds [1, T] ids, which breaks Opacus'
    # per-sample gradients of GPT-2's position embedding (notes 9.3).
    position_ids = torch.arange(t, device=input_ids.device).unsqueeze(0).expand(b, -1)
    out = model(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=position_ids,
        use_cache=False,
    )
    return out.logits


def per_example_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Causal-LM loss per example: mean over its target tokens (labels != -100).

    Padding and the control-code prefix carry label -100 and count neither in the sum nor
    in the denominator. Shape (B,).
    """
    v = logits.shape[-1]
    shift_logits = logits[:, :-1].reshape(-1, v)
    shift_labels = labels[:, 1:]
    tok = nn.functional.cross_entropy(
        shift_logits, shift_labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(shift_labels.shape)
    mask = (shift_labels != IGNORE_INDEX).to(tok.dtype)
    return (tok * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


# ---------------------------------------------------------------------------- training
def _schedule(n: int, cfg: GeneratorTrainConfig) -> tuple[float, int]:
    """Sample rate q = batch_size / N (capped at 1) and steps = ceil(epochs / q)."""
    q = min(1.0, cfg.batch_size / n)
    steps = max(1, math.ceil(cfg.epochs / q - 1e-9))
    return q, steps


def _report_progress(progress: ProgressFn | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def train_dp_generator(
    model: nn.Module,
    tokenizer: Any,
    texts: list[str],
    control_codes: list[str],
    spec: PrivacySpec,
    ledger: PrivacyLedger,
    cfg: GeneratorTrainConfig | None = None,
    progress: ProgressFn | None = None,
    *,
    label: str | None = None,
) -> tuple[nn.Module, PrivacyReport]:
    """Fine-tune `model` on the private `texts` with DP-SGD; record the release in `ledger`.

    Args:
        model: a transformers causal LM. It is modified in place (adapters, frozen
            parameters, weights): treat it as consumed and use the returned model.
        tokenizer: its tokenizer (must have an eos token).
        texts: private texts; ``control_codes[i]`` is the control code of ``texts[i]``.
        spec: privacy settings. ``spec.epsilon == inf`` trains non-privately (plain AdamW,
            no clipping, no noise), as an upper-bound baseline.
        ledger: the client's ledger. The release is checked *before* training (refusal
            raises `BudgetExceededError`, trains nothing and records nothing) and recorded
            after. σ is calibrated so that the composed ε of the ledger stays <= its budget
            (a first release may spend the whole budget); with ``spec.noise_multiplier > 0``
            that σ is used and the budget is enforced as a cap.
        cfg: training hyper-parameters.
        progress: optional callback for progress lines (step counts and the training loss,
            a non-DP statistic of private data: keep it on the client). Never private text.
        label: the release's name in the ledger (default ``"release-<k>"``), e.g.
            ``"round-3"``.

    Returns:
        ``(model, report)``: the trained model, unwrapped (no Opacus wrapper, LoRA merged,
        eval mode), and a `PrivacyReport` with ε composed over the ledger.
    """
    cfg = cfg or GeneratorTrainConfig()
    if len(texts) != len(control_codes):
        raise ValueError(
            f"texts and control_codes differ in length ({len(texts)} != {len(control_codes)})"
        )
    if not texts:
        raise ValueError("no private texts to train on")
    if not ledger.matches(spec):
        # The ledger's budget governs calibration; a different spec would mis-state it.
        raise PrivacyError(
            f"privacy settings (ε={spec.epsilon:g}, δ={spec.delta:g}, {spec.accountant}) do "
            f"not match the client's ledger ({ledger!r})"
        )
    if spec.is_private and cfg.grad_sample_mode == "ghost" and cfg.lora_rank == 0:
        from transformers.pytorch_utils import Conv1D

        if any(isinstance(m, Conv1D) for m in model.modules()):
            # Opacus' ghost clipping fails on GPT-2's Conv1D ("view size is not compatible").
            raise ValueError(
                "generator.grad-sample-mode='ghost' does not support full fine-tuning of "
                "GPT-2-style (Conv1D) models; use 'hooks' or LoRA (lora-rank > 0)"
            )
    n = len(texts)
    q, steps = _schedule(n, cfg)
    label = label or f"release-{len(ledger.releases) + 1}"

    if spec.is_private:
        # Decide σ and check the budget before touching the data.
        sigma = spec.noise_multiplier if spec.noise_multiplier > 0 else ledger.calibrate(q, steps)
        release = Release(sigma, q, steps, label)
        ledger.check(release)
        if spec.delta >= 1.0 / n:
            logger.warning(
                "privacy.delta=%g is not below 1/N=%g (N=%d examples): the guarantee is weak",
                spec.delta,
                1.0 / n,
                n,
            )
    else:
        release = Release(0.0, q, steps, label)
        ledger.check(release)

    torch.manual_seed(cfg.seed)  # dropout and LoRA initialisation
    # Train in fp32 (a bf16 model from the GPU loader would clip and noise in bf16, where
    # per-example norms and small noise lose precision); cast back for sampling afterwards.
    orig_dtype = next(model.parameters()).dtype
    if orig_dtype != torch.float32:
        model = model.float()
    encoded = [
        encode_example(tokenizer, code, text, cfg.max_length)
        for text, code in zip(texts, control_codes, strict=True)
    ]
    dataset = _EncodedTexts(encoded)
    collate = _make_collate(_pad_id(tokenizer))
    model = _prepare_trainable(model, cfg)
    if not _trainable_params(model):
        raise ValueError("the model has no trainable parameters")
    model.train()

    t0 = time.monotonic()
    if spec.is_private:
        model = _train_private(model, dataset, collate, spec, cfg, release, progress, t0)
    else:
        model = _train_non_private(model, dataset, collate, cfg, steps, progress, t0)

    ledger.record(release)
    model = _finalize(model).to(orig_dtype)
    report = PrivacyReport(
        private=spec.is_private,
        target_epsilon=spec.epsilon,
        epsilon=ledger.spent(),
        delta=spec.delta,
        noise_multiplier=release.noise_multiplier,
        sample_rate=q,
        steps=steps,
        epochs=cfg.epochs,
        accountant=spec.accountant,
        max_grad_norm=spec.max_grad_norm if spec.is_private else math.inf,
        num_examples=n,
        mode=DP_MODE if spec.is_private else NON_PRIVATE_MODE,
        release_epsilon=compute_epsilon([release.entry], spec.delta, spec.accountant),
        label=label,
        history=ledger.history,
    )
    _report_progress(
        progress,
        f"generator trained: {report.mode}, ε={report.epsilon:.3g} "
        f"(budget {spec.epsilon:g}), σ={release.noise_multiplier:.4g}, q={q:.4g}, "
        f"steps={steps}, {time.monotonic() - t0:.1f}s",
    )
    return model, report


def _noise_only_step(optimizer: Any, ghost: bool) -> None:
    """DP step for an empty Poisson batch: zero clipped sum + Gaussian noise.

    The accountant analyses every step as "sum of clipped grads of the sampled examples +
    noise"; for an empty sample that is pure noise. Skipping the step instead would reveal
    that the batch was empty, which the analysis does not cover.
    """
    for p in optimizer.params:
        if ghost:
            p.grad = torch.zeros_like(p)
        else:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _train_private(
    model: nn.Module,
    dataset: Dataset,
    collate: Callable[[list], Any],
    spec: PrivacySpec,
    cfg: GeneratorTrainConfig,
    release: Release,
    progress: ProgressFn | None,
    t0: float,
) -> nn.Module:
    import_opacus()
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    ghost = cfg.grad_sample_mode == "ghost"
    n = len(dataset)
    q, steps, sigma = release.sample_rate, release.steps, release.noise_multiplier
    device = next(model.parameters()).device
    sampling_gen = torch.Generator().manual_seed(cfg.seed)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    loader = make_poisson_loader(dataset, q, steps, collate, sampling_gen)
    optimizer = torch.optim.AdamW(
        _trainable_params(model), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Secure RNG turned off", full backward hook notes
        engine = PrivacyEngine(accountant=spec.accountant, secure_mode=False)
        try:
            made = engine.make_private(
                module=model,
                optimizer=optimizer,
                criterion=nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX),
                data_loader=loader,
                noise_multiplier=sigma,
                max_grad_norm=spec.max_grad_norm,
                poisson_sampling=False,  # `loader` already samples Poisson at exactly q
                grad_sample_mode=cfg.grad_sample_mode,
                noise_generator=noise_gen,
                loss_reduction="mean",
            )
        except NotImplementedError as exc:
            raise ValueError(
                f"generator.grad-sample-mode={cfg.grad_sample_mode!r} is not supported for "
                f"this model ({exc}); use 'hooks'"
            ) from exc
    if ghost:
        dp_model, optimizer, criterion, loader = made
    else:
        dp_model, optimizer, loader = made
        criterion = None
    # make_private took q = 1/len(loader) = 1/steps: account and scale with the true q.
    optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=q))
    optimizer.expected_batch_size = max(1, round(n * q))
    if hasattr(dp_model, "forbid_grad_accumulation"):
        # Poisson sampling: per-sample grads must never accumulate across logical batches.
        dp_model.forbid_grad_accumulation()
    if optimizer.max_grad_norm != spec.max_grad_norm:  # the old port ignored this setting
        raise RuntimeError("Opacus optimizer does not clip at privacy.max-grad-norm")

    logical = 0
    empty = 0
    every = max(1, steps // 10)
    # Activations of a small model come from glibc's heap in sub-megabyte pieces; without a
    # trim, what every logical step freed stays resident (fdkt_flwr.memory).
    trim = cfg.trim_heap and device.type == "cpu"
    last_loss = math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with BatchMemoryManager(
            data_loader=loader,
            max_physical_batch_size=cfg.max_physical_batch_size,
            optimizer=optimizer,
        ) as mem_loader:
            for batch in mem_loader:
                if len(batch) != 3 or batch[0].shape[0] == 0:
                    # An empty Poisson sample (only ever a whole logical batch). Opacus'
                    # collate gives zero-length tensors, or a different structure when
                    # the very first batch is empty.
                    _noise_only_step(optimizer, ghost)
                    empty += 1
                else:
                    input_ids, attention, labels = batch
                    input_ids = input_ids.to(device)
                    attention = attention.to(device)
                    labels = labels.to(device)
                    logits = _forward_logits(dp_model, input_ids, attention)
                    if ghost:
                        b, t, v = logits.shape
                        loss = criterion(
                            logits[:, :-1].reshape(-1, v),
                            labels[:, 1:].reshape(-1),
                            shape=(b, t - 1),
                        )
                    else:
                        loss = per_example_lm_loss(logits, labels).mean()
                    loss.backward()
                    last_loss = loss.item()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    del logits, loss
                if not optimizer._is_last_step_skipped:
                    logical += 1
                    if trim:
                        trim_heap()
                    if logical % every == 0 or logical == steps:
                        _report_progress(
                            progress,
                            f"dp-sgd step {logical}/{steps} loss {last_loss:.3f} "
                            f"({time.monotonic() - t0:.1f}s)",
                        )

    taken = sum(n_steps for _, _, n_steps in engine.accountant.history)
    if any((s, r) != (sigma, q) for s, r, _ in engine.accountant.history):
        raise RuntimeError(
            f"Opacus accounted {engine.accountant.history}, expected σ={sigma}, q={q}"
        )
    if logical != steps or taken != steps:
        # The ledger accounts for exactly `steps`; anything else is a bug, not a detail.
        raise RuntimeError(f"DP-SGD took {logical} steps ({taken} accounted), expected {steps}")
    if empty:
        logger.debug("%d of %d Poisson batches were empty (noise-only steps)", empty, steps)
    if hasattr(dp_model, "to_standard_module"):
        return dp_model.to_standard_module()
    return model


def _train_non_private(
    model: nn.Module,
    dataset: Dataset,
    collate: Callable[[list], Any],
    cfg: GeneratorTrainConfig,
    steps: int,
    progress: ProgressFn | None,
    t0: float,
) -> nn.Module:
    """Plain AdamW, no clipping, no noise; same number of steps and batch size as DP-SGD.

    Batches are shuffled fixed-size slices (no privacy analysis to match); a logical batch
    larger than `max_physical_batch_size` is accumulated over physical chunks, with the loss
    weighted so the gradient equals that of the whole logical batch.
    """
    n = len(dataset)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(
        _trainable_params(model), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    bsz = min(cfg.batch_size, n)
    order: list[int] = []
    every = max(1, steps // 10)
    trim = cfg.trim_heap and device.type == "cpu"  # as in _train_private
    for step in range(1, steps + 1):
        if len(order) < bsz:
            order += torch.randperm(n, generator=gen).tolist()
        batch_idx, order = order[:bsz], order[bsz:]
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for start in range(0, bsz, cfg.max_physical_batch_size):
            chunk = batch_idx[start : start + cfg.max_physical_batch_size]
            input_ids, attention, labels = (
                x.to(device) for x in collate([dataset[i] for i in chunk])
            )
            logits = _forward_logits(model, input_ids, attention)
            loss = per_example_lm_loss(logits, labels).sum() / bsz
            loss.backward()
            total += loss.item()
            del logits, loss
        if trim:
            trim_heap()
        optimizer.step()
        if step % every == 0 or step == steps:
            _report_progress(
                progress,
                f"non-private step {step}/{steps} loss {total:.3f} ({time.monotonic() - t0:.1f}s)",
            )
    optimizer.zero_grad(set_to_none=True)
    return model


# ---------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample_demonstrations(
    model: nn.Module,
    tokenizer: Any,
    control_codes: dict[int, str],
    n_per_label: int,
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 0.95,
    batch_size: int = 16,
    seed: int = 0,
) -> list[tuple[str, int]]:
    """Sample `n_per_label` texts for every label, prompting with its control code alone.

    Every label gets the same number of samples (a per-label count would leak the private
    label histogram). Prompts of different labels share batches, left-padded. Decoding
    skips special tokens and returns only the continuation. Deterministic for a given seed
    (the global RNG state is restored afterwards). ``temperature <= 0`` means greedy.

    Returns:
        ``[(text, label), ...]``, labels in ascending order, `n_per_label` each.
    """
    if n_per_label < 0:
        raise ValueError(f"n_per_label={n_per_label}: must be >= 0")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    labels = sorted(control_codes)
    jobs = [lab for lab in labels for _ in range(n_per_label)]
    prompts = {lab: prompt_ids(tokenizer, control_codes[lab]) for lab in labels}
    pad, eos = _pad_id(tokenizer), _eos_id(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[tuple[str, int]] = []
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, len(jobs), batch_size):
                batch = jobs[start : start + batch_size]
                width = max(len(prompts[lab]) for lab in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for i, lab in enumerate(batch):
                    ids = prompts[lab]
                    input_ids[i, width - len(ids) :] = torch.tensor(ids)
                    attention[i, width - len(ids) :] = 1
                gen_kwargs: dict[str, Any] = {
                    "max_new_tokens": max_new_tokens,
                    "pad_token_id": pad,
                    "eos_token_id": eos,
                }
                if temperature > 0:
                    gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
                else:
                    gen_kwargs.update(do_sample=False)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    seqs = model.generate(
                        input_ids=input_ids.to(device),
                        attention_mask=attention.to(device),
                        **gen_kwargs,
                    )
                new = seqs[:, width:].cpu()
                for i, lab in enumerate(batch):
                    text = tokenizer.decode(new[i].tolist(), skip_special_tokens=True)
                    out.append((text, lab))
    finally:
        model.train(was_training)
    return out


# ---------------------------------------------------------------------------- cleaning
DROP_REASONS: tuple[str, ...] = (
    "too_short",
    "too_long",
    "repetitive",
    "duplicate",
    "near_duplicate",
)
_WS = re.compile(r"\s+")


def _char_ngrams(text: str, n: int) -> frozenset[str]:
    t = text.casefold()
    if len(t) <= n:
        return frozenset([t])
    return frozenset(t[i : i + n] for i in range(len(t) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def strip_control_codes(text: str, control_codes: Sequence[str]) -> str:
    """Remove control-code material from a generated continuation.

    * leading copies of any control code are removed (the model may repeat its prompt);
    * a leading line that is only a fragment of a control code (e.g. ``"Rating: 5"`` of
      ``"Domain: health | Rating: 5"``) is removed;
    * the text is cut at any later control code (the model ran on into a new example);
    * whitespace runs collapse to one space.
    """
    codes = sorted({c.strip() for c in control_codes if c.strip()}, key=len, reverse=True)
    t = text.strip()
    changed = True
    while changed and t:
        changed = False
        for code in codes:
            if t.startswith(code):
                t = t[len(code) :].lstrip(" \t:|-\n")
                changed = True
        first, sep, rest = t.partition("\n")
        head = first.strip()
        if sep and head and len(head) >= 3 and any(head in code for code in codes):
            t = rest.strip()
            changed = True
    cut = len(t)
    for code in codes:
        i = t.find(code)
        if i > 0:
            cut = min(cut, i)
    return _WS.sub(" ", t[:cut]).strip()


def clean_demonstrations(
    samples: Sequence[tuple[str, int]],
    control_codes: dict[int, str],
    *,
    min_chars: int = 20,
    max_chars: int = 2000,
    near_dup_threshold: float = 0.8,
    min_distinct_word_ratio: float = 0.3,
    ngram: int = 5,
) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """Clean sampled demonstrations, looking at the samples only.

    Its inputs are the generator's samples and the (public) control codes: it never sees
    private data, so it is post-processing of a DP output and costs no ε.

    Steps, in order: `strip_control_codes`; drop texts shorter than `min_chars`
    (``too_short``) or longer than `max_chars` (``too_long``); drop degenerate repetition
    (``repetitive``: at least 10 words of which under `min_distinct_word_ratio` distinct);
    drop exact duplicates, case-insensitive (``duplicate``); drop near duplicates among the
    kept samples (``near_duplicate``: character `ngram` Jaccard >= `near_dup_threshold`
    with an earlier kept sample). The first of any duplicates is kept; order is preserved.

    Returns:
        ``(kept, drops)`` where ``drops`` maps every reason in `DROP_REASONS` to its count.
    """
    if not 0 < near_dup_threshold <= 1:
        raise ValueError(f"near_dup_threshold={near_dup_threshold}: must be in (0, 1]")
    codes = list(control_codes.values())
    drops = dict.fromkeys(DROP_REASONS, 0)
    kept: list[tuple[str, int]] = []
    seen: set[str] = set()
    kept_grams: list[frozenset[str]] = []
    for raw, lab in samples:
        text = strip_control_codes(raw, codes)
        if len(text) < min_chars:
            drops["too_short"] += 1
            continue
        if len(text) > max_chars:
            drops["too_long"] += 1
            continue
        words = text.casefold().split()
        if len(words) >= 10 and len(set(words)) / len(words) < min_distinct_word_ratio:
            drops["repetitive"] += 1
            continue
        key = text.casefold()
        if key in seen:
            drops["duplicate"] += 1
            continue
        grams = _char_ngrams(text, ngram)
        if any(jaccard(grams, g) >= near_dup_threshold for g in kept_grams):
            drops["near_duplicate"] += 1
            continue
        seen.add(key)
        kept_grams.append(grams)
        kept.append((text, lab))
    return kept, drops
