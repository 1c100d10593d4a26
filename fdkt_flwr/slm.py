"""FDKT step 5: train the client's small task model (SLM) and evaluate it on held-out data.

The client trains its SLM on its private data plus the synthetic data the server's LLM returned,
and evaluates it on its own held-out test split. The baseline is the same call with no synthetic
data (or ``synthetic_weight=0``), which is exactly local-only training.

Two kinds of SLM share one API, chosen by the model that ``cfg.model`` loads:

* an **encoder classifier** (``AutoModelForSequenceClassification``, e.g. all-MiniLM-L6-v2 with a
  new head), trained with cross-entropy on the label;
* a **causal LM used as a classifier** (e.g. the paper's GPT-2 family, or SmolLM2): fine-tuned on
  ``text + "\\nLabel:" + " <label name>" + EOS`` with the loss on the label tokens only, and
  classifying a text by the label whose verbalizer has the highest log-likelihood.

Data isolation is structural: :func:`train_slm` has no test argument at all, so nothing it does
(training, validation, model selection) can see the test split; :func:`train_and_evaluate` calls
it and only then hands the test texts to :meth:`TrainedSLM.predict`, once. The validation split is
carved from the *private* data only (stratified, seeded); synthetic data is never validated on.

The trained SLM saw raw private text and is not a DP artefact: it must never leave the client.
Nothing here logs or reports text; progress messages carry only counts, losses and metrics.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fdkt_flwr.config import SLMConfig as _RunSLMConfig
from fdkt_flwr.metrics import classification_metrics, majority_rate

__all__ = [
    "CAUSAL_PROMPT_SUFFIX",
    "SCHEDULES",
    "SLMConfig",
    "TrainedSLM",
    "default_model_loader",
    "is_causal_lm",
    "split_private",
    "train_and_evaluate",
    "train_slm",
]

Split = tuple[Sequence[str], Sequence[int]]
Progress = Callable[[str], None]
# (model name, number of labels) -> (model, tokenizer). The loaded model's class decides the path.
ModelLoader = Callable[[str, int], tuple[Any, Any]]

SCHEDULES = ("mixed", "synthetic-first")
# Defaults of the settings that the run config exposes come from fdkt_flwr.config (one place).
_RUN = _RunSLMConfig()
# Appended to every text in the causal-LM path; the label verbalizer (" <name>" + EOS) follows.
CAUSAL_PROMPT_SUFFIX = "\nLabel:"


@dataclass
class SLMConfig:
    """How the client SLM is trained. Defaults are sized for a 2-core CPU and ~100-1000 examples.

    Measured: all-MiniLM-L6-v2 on 128 private fine-food reviews (109 train / 19 validation) at
    these defaults trains in ~10-30 s per epoch on a shared 2-core CPU and reaches 0.74 test
    accuracy on 200 reviews (majority rate 0.64). At lr 1e-4 and 3 epochs (21 steps) it still
    predicted the majority class only, hence the higher rate and the extra epoch.
    """

    model: str = _RUN.model
    epochs: int = _RUN.epochs
    batch_size: int = _RUN.batch_size
    eval_batch_size: int = 64
    learning_rate: float = _RUN.learning_rate
    max_length: int = _RUN.max_length
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    # Loss weight of a synthetic example relative to a private one (weight 1); a batch's loss is
    # the weighted mean of its examples' losses. 0 drops the synthetic data entirely, which is
    # then exactly the local-only baseline. Under "synthetic-first" the synthetic phase's batches
    # are all synthetic, so there only 0 versus > 0 matters.
    synthetic_weight: float = _RUN.synthetic_weight
    # "mixed": private-train and synthetic shuffled together every epoch.
    # "synthetic-first": `synthetic_epochs` passes over synthetic only, then `epochs` passes over
    # private-train only (pre-train on the server's data, then adapt to the client's).
    schedule: str = _RUN.schedule
    synthetic_epochs: int = 1
    # Fraction of the PRIVATE data held out for model selection (stratified, seeded).
    validation_fraction: float = _RUN.validation_fraction
    # Keep the epoch with the best validation macro-F1 (ties: accuracy, then validation loss,
    # then the earlier epoch).
    select_best: bool = True
    seed: int = 0
    device: str = "auto"  # "auto" = cuda when available, else cpu

    def validate(self) -> None:
        """Raise ``ValueError`` (one line naming the field) on an invalid setting."""
        checks: list[tuple[bool, str]] = [
            (bool(self.model.strip()), "model must not be empty"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.eval_batch_size >= 1, "eval_batch_size must be >= 1"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.max_length >= 2, "max_length must be >= 2"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.max_grad_norm > 0, "max_grad_norm must be > 0"),
            (self.synthetic_weight >= 0 and math.isfinite(self.synthetic_weight),
             "synthetic_weight must be a finite number >= 0"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.synthetic_epochs >= 1, "synthetic_epochs must be >= 1"),
            (0 <= self.validation_fraction < 1, "validation_fraction must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SLMConfig: {message}")


# --------------------------------------------------------------------------- model loading

def _causal_class_names() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _names_are_causal(names: Sequence[str]) -> bool:
    known = _causal_class_names()
    return any(
        n in known or n.endswith(("ForCausalLM", "LMHeadModel"))
        for n in names
        if "ForSequenceClassification" not in n
    )


def is_causal_lm(model: Any) -> bool:
    """True when ``model`` is a causal LM (scored by label likelihood), False for a classifier."""
    cls = type(model).__name__
    if "ForSequenceClassification" in cls:
        return False
    if _names_are_causal([cls]):
        return True
    config = getattr(model, "config", None)
    return bool(getattr(config, "is_decoder", False)) and hasattr(model, "lm_head")


def default_model_loader(name: str, num_labels: int) -> tuple[Any, Any]:
    """Load ``name`` through :mod:`fdkt_flwr.models` as the right kind of SLM, as a fresh copy.

    A checkpoint whose config declares a causal-LM architecture (``*ForCausalLM``,
    ``*LMHeadModel``, or ``is_decoder``) is loaded as a causal LM in fp32 (for training);
    anything else gets a new ``num_labels`` classification head.
    """
    from fdkt_flwr import models

    causal = False
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(models.resolve_model(name))
        causal = bool(getattr(config, "is_decoder", False)) or _names_are_causal(
            list(getattr(config, "architectures", None) or [])
        )
    except (OSError, ValueError):
        # Unresolvable or offline: let the classifier loader raise its explanatory error.
        causal = False
    if causal:
        return models.load_causal_lm(name, dtype=torch.float32, fresh=True)
    return models.load_sequence_classifier(name, num_labels)


# --------------------------------------------------------------------------- data split

def split_private(
    labels: Sequence[int], fraction: float, seed: int
) -> tuple[list[int], list[int]] | None:
    """Stratified, seeded train/validation split of the PRIVATE data, as sorted index lists.

    Returns None when no sensible split exists: ``fraction == 0``, a class with fewer than
    2 examples (it could not appear on both sides), or fewer validation or training examples than
    classes. The caller then trains on all private data and skips model selection.
    """
    n = len(labels)
    if fraction <= 0 or n == 0:
        return None
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    present = int(np.count_nonzero(counts))
    n_val = round(fraction * n)
    if counts[counts > 0].min() < 2 or n_val < present or n - n_val < present:
        return None
    from sklearn.model_selection import train_test_split

    train_idx, val_idx = train_test_split(
        np.arange(n), test_size=n_val, stratify=np.asarray(labels), random_state=seed
    )
    return sorted(int(i) for i in train_idx), sorted(int(i) for i in val_idx)


# --------------------------------------------------------------------------- the two SLM kinds

def _pad(rows: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if not row:
            continue
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def _tokenize(tokenizer: Any, texts: Sequence[str], max_length: int,
              add_special_tokens: bool = True) -> list[list[int]]:
    # Every text the SLM ever sees goes through this one call (no other tokenizer method is
    # used), which is what the isolation tests hook into.
    if not texts:
        return []
    enc = tokenizer(list(texts), truncation=True, max_length=max_length,
                    add_special_tokens=add_special_tokens)
    return [list(map(int, ids)) for ids in enc["input_ids"]]


class _Classifier:
    """Encoder with a classification head: cross-entropy on the label."""

    kind = "sequence-classifier"

    def __init__(self, model: Any, tokenizer: Any, num_labels: int, max_length: int) -> None:
        head = getattr(model.config, "num_labels", num_labels)
        if head != num_labels:
            raise ValueError(f"the classifier has {head} outputs but there are {num_labels} labels")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = _pad_id(tokenizer)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return _tokenize(self.tokenizer, texts, self.max_length)

    def _logits(self, model: Any, rows: Sequence[Sequence[int]], device: torch.device
                ) -> torch.Tensor:
        ids, mask = _pad(rows, self.pad_id, left=False)
        return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits

    def example_losses(self, model: Any, rows: Sequence[Sequence[int]], labels: Sequence[int],
                       device: torch.device) -> torch.Tensor:
        logits = self._logits(model, rows, device)
        target = torch.tensor(list(labels), dtype=torch.long, device=device)
        return F.cross_entropy(logits.float(), target, reduction="none")

    def predict_batch(self, model: Any, rows: Sequence[Sequence[int]],
                      labels: Sequence[int] | None, device: torch.device,
                      batch_size: int) -> tuple[list[int], list[float]]:
        """Predicted label ids, and per-example losses when ``labels`` are given."""
        preds: list[int] = []
        losses: list[float] = []
        for start in range(0, len(rows), batch_size):
            logits = self._logits(model, rows[start:start + batch_size], device).float()
            preds += logits.argmax(-1).tolist()
            if labels is not None:
                gold = torch.tensor(list(labels[start:start + batch_size]), device=device)
                losses += F.cross_entropy(logits, gold, reduction="none").tolist()
        return preds, losses


class _CausalScorer:
    """Causal LM as a classifier: fine-tune on text + verbalizer, predict by label likelihood."""

    kind = "causal-lm-scorer"

    def __init__(self, model: Any, tokenizer: Any, label_names: Sequence[str],
                 max_length: int) -> None:
        self.tokenizer = tokenizer
        self.pad_id = _pad_id(tokenizer)
        eos = getattr(tokenizer, "eos_token_id", None)
        # The EOS after the verbalizer makes a label that is a prefix of another ("pos" vs
        # "positive") distinguishable and teaches the model where the answer ends.
        self.targets = [
            _tokenize(tokenizer, [" " + name], max_length, add_special_tokens=False)[0]
            + ([int(eos)] if eos is not None else [])
            for name in label_names
        ]
        if any(not t for t in self.targets) or len({tuple(t) for t in self.targets}) != len(
            self.targets
        ):
            raise ValueError("label names must tokenize to distinct, non-empty verbalizers")
        self.suffix = _tokenize(tokenizer, [CAUSAL_PROMPT_SUFFIX], max_length,
                                add_special_tokens=False)[0]
        self.max_target = max(len(t) for t in self.targets)
        self.text_budget = max_length - len(self.suffix) - self.max_target
        if self.text_budget < 1:
            raise ValueError(f"max_length={max_length} leaves no room for the text next to the "
                             "prompt suffix and the label verbalizer")
        params = inspect.signature(model.forward).parameters
        forwards_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
        # logits_to_keep only when declared (the slicing below gives the same result anyway);
        # position_ids also through **kwargs, as wrappers such as PEFT models forward them and
        # left padding is wrong without them.
        self.accepts_keep = "logits_to_keep" in params
        self.accepts_positions = "position_ids" in params or forwards_kwargs

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        prompts = _tokenize(self.tokenizer, texts, self.text_budget)
        # A prompt must hold at least one token before the answer (the first target token is
        # predicted from the position before it).
        return [(p + self.suffix) or [self.pad_id] for p in prompts]

    def _target_nll(self, model: Any, prompts: Sequence[Sequence[int]],
                    label_ids: Sequence[int], device: torch.device) -> tuple[torch.Tensor,
                                                                             torch.Tensor]:
        """Per-row summed negative log-likelihood of the label's verbalizer, and its length."""
        targets = [self.targets[y] for y in label_ids]
        keep = max(len(t) for t in targets)
        # Left padding puts every row's answer at the end, so only the last `keep + 1`
        # positions need logits: this skips the vocabulary projection for the prompt, which for
        # small LMs with large vocabularies is a large share of the compute and memory.
        ids, mask = _pad([list(p) + t for p, t in zip(prompts, targets, strict=True)],
                         self.pad_id, left=True)
        kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                                  "use_cache": False}
        if self.accepts_positions:
            # Absolute-position models (GPT-2) need positions that start at the first real token.
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
        if self.accepts_keep:
            kwargs["logits_to_keep"] = keep + 1
        logits = model(**kwargs).logits[:, -(keep + 1):-1].float()
        gold = torch.full((len(targets), keep), -100, dtype=torch.long)
        for i, t in enumerate(targets):
            gold[i, keep - len(t):] = torch.tensor(t, dtype=torch.long)
        gold = gold.to(device)
        nll = F.cross_entropy(logits.transpose(1, 2), gold, reduction="none", ignore_index=-100)
        return nll.sum(-1), (gold != -100).sum(-1)

    def example_losses(self, model: Any, rows: Sequence[Sequence[int]], labels: Sequence[int],
                       device: torch.device) -> torch.Tensor:
        nll, length = self._target_nll(model, rows, labels, device)
        return nll / length  # mean per answer token, so long label names do not dominate

    def predict_batch(self, model: Any, rows: Sequence[Sequence[int]],
                      labels: Sequence[int] | None, device: torch.device,
                      batch_size: int) -> tuple[list[int], list[float]]:
        """Predicted label ids, and per-example losses when ``labels`` are given."""
        k = len(self.targets)
        per_batch = max(1, batch_size // k)
        lengths = torch.tensor([len(t) for t in self.targets], dtype=torch.float32)
        preds: list[int] = []
        losses: list[float] = []
        for start in range(0, len(rows), per_batch):
            chunk = rows[start:start + per_batch]
            prompts = [p for p in chunk for _ in range(k)]
            candidates = [y for _ in chunk for y in range(k)]
            nll = self._target_nll(model, prompts, candidates, device)[0].view(len(chunk), k)
            # Highest log-likelihood of the whole verbalizer (a proper P(label | text)).
            preds += nll.argmin(-1).tolist()
            if labels is not None:
                # The training loss of the gold verbalizer (mean per answer token).
                per_token = nll.cpu() / lengths
                gold = labels[start:start + per_batch]
                losses += [float(per_token[i, y]) for i, y in enumerate(gold)]
        return preds, losses


def _predict(
    strategy: Any, model: Any, rows: Sequence[Sequence[int]], device: torch.device,
    batch_size: int, labels: Sequence[int] | None = None,
) -> tuple[list[int], float | None]:
    """Predictions in the input order, and the mean loss when ``labels`` are given.

    Batches are sorted by length (less padding, which matters on a CPU).
    """
    if not rows:
        return [], None
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        sorted_preds, losses = strategy.predict_batch(
            model, [rows[i] for i in order],
            None if labels is None else [labels[i] for i in order], device, batch_size,
        )
    model.train(was_training)
    preds = [0] * len(rows)
    for i, p in zip(order, sorted_preds, strict=True):
        preds[i] = int(p)
    return preds, (float(np.mean(losses)) if labels is not None else None)


# --------------------------------------------------------------------------- training

@dataclass
class TrainedSLM:
    """A trained client SLM. ``report`` describes the training; it holds no text.

    The model was trained on raw private data: keep it on the client.
    """

    model: Any
    tokenizer: Any
    label_names: list[str]
    cfg: SLMConfig
    kind: str
    report: dict[str, Any] = field(default_factory=dict)
    # Label ids the model trained on (private-train, or synthetic when there is no private data);
    # used for the majority-class reference.
    train_labels: list[int] = field(default_factory=list)
    _strategy: Any = field(default=None, repr=False)
    _device: torch.device = field(default_factory=lambda: torch.device("cpu"), repr=False)

    def predict(self, texts: Sequence[str]) -> list[int]:
        """Label ids for ``texts`` (the model is put in eval mode)."""
        rows = self._strategy.encode(list(texts))
        return _predict(self._strategy, self.model, rows, self._device,
                        self.cfg.eval_batch_size)[0]

    def evaluate(self, texts: Sequence[str], labels: Sequence[int]) -> dict[str, Any]:
        """:func:`~fdkt_flwr.metrics.classification_metrics` of :meth:`predict` on a split."""
        return classification_metrics(list(labels), self.predict(texts), len(self.label_names),
                                      self.label_names)


def _check_split(name: str, split: Split, num_labels: int) -> tuple[list[str], list[int]]:
    texts, labels = list(split[0]), [int(y) for y in split[1]]
    if len(texts) != len(labels):
        raise ValueError(f"{name}: {len(texts)} texts but {len(labels)} labels")
    if any(not 0 <= y < num_labels for y in labels):
        raise ValueError(f"{name}: a label outside [0, {num_labels})")
    return texts, labels


def _resolve_device(cfg: SLMConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up then linear decay to 0 (the usual BERT fine-tuning schedule)."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return f


def _optimizer(model: Any, cfg: SLMConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            # Biases and norm gains (1-d) are conventionally not weight-decayed.
            (no_decay if p.ndim < 2 else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
    )


def train_slm(
    private: Split,
    synthetic: Split,
    label_names: Sequence[str],
    cfg: SLMConfig | None = None,
    progress: Progress | None = None,
    model_loader: ModelLoader | None = None,
) -> TrainedSLM:
    """Train the client SLM on private + synthetic data; select the epoch on private validation.

    Contract:
    * Takes no test data, by design: selection uses only the validation split that
      :func:`split_private` carves from ``private`` (never from ``synthetic``).
    * Private examples have loss weight 1, synthetic ones ``cfg.synthetic_weight``; a batch's loss
      is the weighted mean of its per-example losses. ``synthetic_weight == 0`` (or an empty
      ``synthetic``) trains exactly the local-only baseline.
    * Deterministic for a given ``cfg.seed`` (and machine): the model's new weights, dropout and
      every shuffle are seeded.
    * With no possible validation split, trains on all private data, keeps the last epoch and
      says so in ``report["selection"]``.
    """
    cfg = cfg or SLMConfig()
    cfg.validate()
    started = time.perf_counter()
    say: Progress = progress or (lambda _msg: None)
    names = [str(n) for n in label_names]
    num_labels = len(names)
    if num_labels < 2:
        raise ValueError("an SLM needs at least 2 labels")
    priv_texts, priv_labels = _check_split("private", private, num_labels)
    syn_texts, syn_labels = _check_split("synthetic", synthetic, num_labels)
    use_synthetic = cfg.synthetic_weight > 0 and bool(syn_texts)
    if not priv_texts and not use_synthetic:
        raise ValueError("nothing to train on: private data is empty and no synthetic data is used")

    split = split_private(priv_labels, cfg.validation_fraction, cfg.seed)
    if split is None:
        train_idx, val_idx = list(range(len(priv_texts))), []
        selection = ("last epoch: no validation split (validation_fraction is 0 or the private "
                     "data has too few examples per class); trained on all private data")
    else:
        train_idx, val_idx = split
        selection = ("best validation macro-F1 epoch" if cfg.select_best
                     else "last epoch (select_best is off)")

    torch.manual_seed(cfg.seed)  # before loading: the new classification head is random
    model, tokenizer = (model_loader or default_model_loader)(cfg.model, num_labels)
    device = _resolve_device(cfg)
    model.to(device)
    strategy: Any = (_CausalScorer(model, tokenizer, names, cfg.max_length)
                     if is_causal_lm(model) else
                     _Classifier(model, tokenizer, num_labels, cfg.max_length))

    # Encode once (texts are never kept beyond this point in any report).
    train_rows = strategy.encode([priv_texts[i] for i in train_idx])
    train_y = [priv_labels[i] for i in train_idx]
    syn_rows = strategy.encode(syn_texts) if use_synthetic else []
    syn_y = syn_labels if use_synthetic else []
    val_rows = strategy.encode([priv_texts[i] for i in val_idx])
    val_y = [priv_labels[i] for i in val_idx]

    # The epoch plan: a list of (phase, rows, labels, loss weights), one entry per pass.
    priv_w = [1.0] * len(train_rows)
    syn_w = [cfg.synthetic_weight] * len(syn_rows)
    Pass = tuple[str, list[list[int]], list[int], list[float]]
    passes: list[Pass]
    if cfg.schedule == "mixed" or not syn_rows:
        phase = "mixed" if syn_rows else "private"
        passes = [(phase, train_rows + syn_rows, train_y + syn_y, priv_w + syn_w)] * cfg.epochs
    else:  # synthetic-first
        passes = [("synthetic", syn_rows, syn_y, syn_w)] * cfg.synthetic_epochs
        if train_rows:
            passes += [("private", train_rows, train_y, priv_w)] * cfg.epochs

    total_steps = sum(math.ceil(len(p[1]) / cfg.batch_size) for p in passes)
    optimizer = _optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, int(cfg.warmup_ratio * total_steps))
    )
    shuffle_rng = np.random.default_rng([cfg.seed, 1])
    torch.manual_seed(cfg.seed)  # dropout stream independent of what the loader consumed

    history: list[dict[str, Any]] = []
    best: tuple[float, float, float] | None = None
    best_epoch, best_state, best_val = len(passes), None, None
    val_metrics: dict[str, Any] | None = None
    say(f"training {strategy.kind} on {len(train_rows)} private + {len(syn_rows)} synthetic "
        f"examples, validating on {len(val_rows)}; {len(passes)} epochs, {total_steps} steps")
    for epoch, (phase, rows, ys, ws) in enumerate(passes, start=1):
        model.train()
        order = shuffle_rng.permutation(len(rows))
        loss_sum, weight_sum = 0.0, 0.0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            weights = torch.tensor([ws[i] for i in idx], dtype=torch.float32, device=device)
            losses = strategy.example_losses(model, [rows[i] for i in idx], [ys[i] for i in idx],
                                             device)
            loss = (losses * weights).sum() / weights.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm
            )
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * float(weights.sum())
            weight_sum += float(weights.sum())
        entry: dict[str, Any] = {"epoch": epoch, "phase": phase, "examples": len(rows),
                                 "loss": loss_sum / max(weight_sum, 1e-12),
                                 "val_accuracy": None, "val_macro_f1": None, "val_loss": None}
        message = f"epoch {epoch}/{len(passes)} ({phase}) loss {entry['loss']:.4f}"
        if val_rows:
            val_pred, val_loss = _predict(strategy, model, val_rows, device,
                                          cfg.eval_batch_size, val_y)
            val_metrics = classification_metrics(val_y, val_pred, num_labels, names)
            val_metrics["loss"] = val_loss
            entry["val_accuracy"] = val_metrics["accuracy"]
            entry["val_macro_f1"] = val_metrics["macro_f1"]
            entry["val_loss"] = val_loss
            message += (f" val macro-F1 {val_metrics['macro_f1']:.4f}"
                        f" acc {val_metrics['accuracy']:.4f} loss {val_loss:.4f}")
            # Small validation splits often tie on macro-F1 and accuracy (e.g. while the model
            # still predicts the majority class); the validation loss then breaks the tie.
            score = (val_metrics["macro_f1"], val_metrics["accuracy"], -float(val_loss or 0.0))
            if cfg.select_best and (best is None or score > best):
                best, best_epoch, best_val = score, epoch, val_metrics
                # A CPU copy: the selected weights survive later epochs without doubling
                # accelerator memory.
                best_state = {k: v.detach().to("cpu", copy=True)
                              for k, v in model.state_dict().items()}
        history.append(entry)
        say(message)

    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_val = val_metrics  # last epoch's (None without a validation split)
    model.eval()
    if cfg.select_best and best_state is not None:
        say(f"selected epoch {best_epoch} (validation macro-F1 {best_val['macro_f1']:.4f})")

    report: dict[str, Any] = {
        "validation": best_val,
        "num_train_private": len(train_rows),
        "num_synthetic": len(syn_texts),
        "num_synthetic_used": len(syn_rows),
        "num_validation": len(val_rows),
        "best_epoch": best_epoch,
        "selection": selection,
        "history": history,
        "model_kind": strategy.kind,
        "config": asdict(cfg),
        "train_seconds": time.perf_counter() - started,
    }
    return TrainedSLM(model=model, tokenizer=tokenizer, label_names=names, cfg=cfg,
                      kind=strategy.kind, report=report, train_labels=train_y or syn_y,
                      _strategy=strategy, _device=device)


def train_and_evaluate(
    private: Split,
    synthetic: Split,
    test: Split,
    label_names: Sequence[str],
    cfg: SLMConfig | None = None,
    progress: Progress | None = None,
    model_loader: ModelLoader | None = None,
) -> dict[str, Any]:
    """Train the SLM (:func:`train_slm`), then evaluate the selected model once on ``test``.

    ``private``, ``synthetic`` and ``test`` are ``(texts, labels)`` with label ids in
    ``[0, len(label_names))``. ``synthetic`` may be empty: that is the local-only baseline.

    Returns a JSON-ready dict without any text:

    * ``test``: :func:`~fdkt_flwr.metrics.classification_metrics` of the selected model;
    * ``validation``: the same (plus the mean ``loss``) on the private validation split for the
      selected epoch, or None when there was no validation split;
    * ``num_train_private``, ``num_synthetic`` (given), ``num_synthetic_used`` (0 when
      ``synthetic_weight == 0``), ``num_validation``;
    * ``best_epoch`` (1-based index into ``history``), ``selection`` (how it was chosen),
      ``history`` (per epoch: phase, examples, training loss, validation metrics);
    * ``model_kind`` (``sequence-classifier`` or ``causal-lm-scorer``), ``majority_rate`` (test
      accuracy of always predicting the most frequent training label), ``config``,
      ``train_seconds``, ``seconds``.
    """
    started = time.perf_counter()
    cfg = cfg or SLMConfig()
    test_texts, test_labels = _check_split("test", test, len(label_names))
    if not test_texts:
        raise ValueError("test: empty split; nothing to evaluate on")

    # Training and model selection: the test split is not an argument, so it cannot leak in.
    trained = train_slm(private, synthetic, label_names, cfg, progress, model_loader)

    # Only now, with the model final, are the test texts looked at: once, for evaluation.
    if progress:
        progress(f"evaluating on {len(test_texts)} test examples")
    result = dict(trained.report)
    result["test"] = trained.evaluate(test_texts, test_labels)
    result["majority_rate"] = majority_rate(trained.train_labels, test_labels)
    result["seconds"] = time.perf_counter() - started
    if progress:
        progress(f"test macro-F1 {result['test']['macro_f1']:.4f} "
                 f"accuracy {result['test']['accuracy']:.4f} "
                 f"(majority rate {result['majority_rate']:.4f})")
    return result
