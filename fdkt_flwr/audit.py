"""Canary audit of the DP generator ("The Secret Sharer", Carlini et al. 2019).

A random secret sentence (the *canary*, e.g. ``"the secret code is 4 0 9 1 7 3"``) is planted
`repeats` times into a client's private texts. The generator is fine-tuned on them with
`train_dp_generator` at several ε, and for each trained model we measure:

* **exposure** = log2 |R| − log2 rank, where R is the canary plus `num_candidates` random
  secrets of the same format, and rank is the canary's position when R is sorted by the
  model's log-likelihood (rank 1 = most likely). Exposure near log2 |R| means the model
  memorised the secret; near 1 (the expectation for a random rank) means it did not.
* whether the secret (or the canary's template) appears in sampled demonstrations, which is
  what would actually leave the client.

This is an empirical check of the implementation, not a proof: DP bounds how much a model
can favour the canary, so exposure should fall towards chance as ε shrinks, while a
non-private model (ε = ∞) trained long enough memorises it.

CLI::

    python -m fdkt_flwr.audit --epsilons 1,8,inf --out audit.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fdkt_flwr.generator import (
    GeneratorTrainConfig,
    _make_collate,
    _pad_id,
    encode_example,
    sample_demonstrations,
    train_dp_generator,
)
from fdkt_flwr.privacy import PrivacyLedger, PrivacySpec

CANARY_TEMPLATE = "the secret code is {secret}"
DEFAULT_CODE = "Domain: audit | Label: canary"

ModelLoader = Callable[[], tuple[nn.Module, Any]]


def format_secret(digits: Sequence[int]) -> str:
    """Digits separated by spaces, so that every tokenizer sees one token per digit."""
    return " ".join(str(d) for d in digits)


def random_secrets(n: int, length: int, rng: random.Random, exclude: set[str]) -> list[str]:
    """`n` distinct random digit secrets of `length` digits, none in `exclude`."""
    space = 10**length
    if n > space - len(exclude):
        raise ValueError(f"cannot draw {n} distinct secrets of {length} digits")
    out: list[str] = []
    seen = set(exclude)
    while len(out) < n:
        s = format_secret(rng.randrange(10) for _ in range(length))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def exposure(canary_score: float, candidate_scores: Sequence[float]) -> tuple[float, float]:
    """Exposure of the canary among candidates, by log-likelihood (higher = more likely).

    |R| = len(candidate_scores) + 1 (the canary is one of the secrets ranked). The rank is
    1 + #candidates scoring higher, + half the ties (the expected rank under random tie
    breaking). Returns ``(exposure, rank)``; exposure is in [0, log2 |R|].
    """
    size = len(candidate_scores) + 1
    higher = sum(1 for s in candidate_scores if s > canary_score)
    ties = sum(1 for s in candidate_scores if s == canary_score)
    rank = 1 + higher + ties / 2
    return math.log2(size) - math.log2(rank), rank


@torch.no_grad()
def sequence_log_likelihoods(
    model: nn.Module,
    tokenizer: Any,
    control_code: str,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int = 512,
) -> list[float]:
    """Σ log p(token) over each text's tokens and eos, given the control-code prompt.

    Texts are rendered exactly as in training (`encode_example`); the control-code prefix
    is conditioned on, not scored.
    """
    collate = _make_collate(_pad_id(tokenizer))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        for start in range(0, len(texts), batch_size):
            items = []
            for text in texts[start : start + batch_size]:
                ids, plen = encode_example(tokenizer, control_code, text, max_length)
                items.append((torch.tensor(ids), torch.tensor(plen)))
            input_ids, attention, labels = (x.to(device) for x in collate(items))
            b, t = input_ids.shape
            position_ids = torch.arange(t, device=device).unsqueeze(0).expand(b, -1)
            logits = model(
                input_ids=input_ids,
                attention_mask=attention,
                position_ids=position_ids,
                use_cache=False,
            ).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = labels[:, 1:]
            mask = target != -100
            picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            out.extend((picked * mask).sum(dim=1).tolist())
    finally:
        model.train(was_training)
    return out


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def count_leaks(samples: Sequence[str], secret: str, template: str) -> tuple[int, int]:
    """``(samples containing the secret, samples containing the template's fixed head)``,
    whitespace- and case-insensitively (``template`` as `CANARY_TEMPLATE`)."""
    head = _normalise(template.split("{")[0])
    sec = _normalise(secret)
    norm = [_normalise(s) for s in samples]
    return sum(sec in s for s in norm), sum(head in s for s in norm)


def run_audit(
    model_loader: ModelLoader,
    texts: Sequence[str],
    epsilons: Sequence[float],
    *,
    control_codes: Sequence[str] | None = None,
    canary_code: str | None = None,
    repeats: int = 4,
    num_candidates: int = 1000,
    secret_length: int = 6,
    delta: float = 1e-5,
    max_grad_norm: float = 1.0,
    accountant: str = "prv",
    train_cfg: GeneratorTrainConfig | None = None,
    samples_per_label: int = 16,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 0.95,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Plant a canary `repeats` times, train at each ε, and measure its exposure.

    Args:
        model_loader: returns a *fresh* ``(model, tokenizer)`` per call (training consumes
            the model).
        texts: the (private) texts to plant the canary into. They are never printed.
        epsilons: budgets to audit; ``math.inf`` = non-private upper bound.
        control_codes: control code of each text (default: one code for all).
        canary_code: control code of the canary (default: the first code).
        repeats: how many copies of the canary are planted (k).
        num_candidates: random secrets the canary is ranked against (|R| = this + 1).
        secret_length: digits in the secret.
        delta, max_grad_norm, accountant: privacy settings of every run (fresh ledger each).
        train_cfg: generator training settings (its seed is overridden by `seed`).
        samples_per_label: demonstrations sampled per label to look for the canary.
        max_new_tokens, temperature, top_p: sampling settings (temperature 0 = greedy).
        seed: seeds the canary, the candidates, training and sampling.

    Returns:
        One dict per ε: privacy figures (``epsilon_spent``, ``noise_multiplier``, ...),
        ``rank``, ``exposure``, ``max_exposure``, ``exposure_before`` (same canary under the
        untrained model), and ``samples_with_secret`` / ``samples_with_template`` counts.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: must be >= 1")
    codes = list(control_codes) if control_codes is not None else [DEFAULT_CODE] * len(texts)
    if len(codes) != len(texts):
        raise ValueError("texts and control_codes differ in length")
    canary_code = canary_code or codes[0]
    rng = random.Random(seed)
    secret = random_secrets(1, secret_length, rng, set())[0]
    canary = CANARY_TEMPLATE.format(secret=secret)
    candidates = [
        CANARY_TEMPLATE.format(secret=s)
        for s in random_secrets(num_candidates, secret_length, rng, {secret})
    ]
    label_codes = {i: c for i, c in enumerate(dict.fromkeys([*codes, canary_code]))}
    cfg = replace(train_cfg or GeneratorTrainConfig(), seed=seed)
    longest = max([canary, *candidates], key=len)
    planted_texts = [*texts, *([canary] * repeats)]
    planted_codes = [*codes, *([canary_code] * repeats)]

    results: list[dict[str, Any]] = []
    for eps in epsilons:
        model, tok = model_loader()
        ids, _ = encode_example(tok, canary_code, longest, 10**6)
        if len(ids) > cfg.max_length:
            # Training truncates at max_length: an untrained canary tail would be scored.
            raise ValueError(
                f"generator.max-length={cfg.max_length}: the canary needs {len(ids)} tokens"
            )
        scores = sequence_log_likelihoods(model, tok, canary_code, [canary, *candidates])
        before, _ = exposure(scores[0], scores[1:])
        spec = PrivacySpec(float(eps), delta, max_grad_norm, accountant=accountant)
        ledger = PrivacyLedger.for_spec(spec)
        if progress:
            progress(
                f"audit ε={eps:g}: training on {len(planted_texts)} texts ({repeats} canary copies)"
            )
        model, report = train_dp_generator(
            model, tok, planted_texts, planted_codes, spec, ledger, cfg, progress=progress
        )
        scores = sequence_log_likelihoods(model, tok, canary_code, [canary, *candidates])
        exp, rank = exposure(scores[0], scores[1:])
        samples = sample_demonstrations(
            model,
            tok,
            label_codes,
            samples_per_label,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )
        with_secret, with_template = count_leaks(
            [text for text, _ in samples], secret, CANARY_TEMPLATE
        )
        row = {
            "target_epsilon": float(eps),
            "epsilon_spent": report.epsilon,
            "private": report.private,
            "delta": delta,
            "noise_multiplier": report.noise_multiplier,
            "sample_rate": report.sample_rate,
            "steps": report.steps,
            "max_grad_norm": max_grad_norm,
            "accountant": accountant,
            "num_texts": len(texts),
            "repeats": repeats,
            "num_candidates": num_candidates,
            "canary": canary,
            "rank": rank,
            "exposure": exp,
            "max_exposure": math.log2(num_candidates + 1),
            "exposure_before": before,
            "canary_log_likelihood": scores[0],
            "num_samples": len(samples),
            "samples_with_secret": with_secret,
            "samples_with_template": with_template,
        }
        results.append(row)
        if progress:
            progress(f"audit ε={eps:g}: exposure {exp:.2f} of {row['max_exposure']:.2f} bits")
    return results


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of audit results."""
    head = (
        f"{'ε target':>9} {'ε spent':>8} {'σ':>7} {'steps':>5} {'rank':>7} "
        f"{'exposure':>8} {'max':>5} {'before':>6} {'secret':>6} {'template':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['target_epsilon']:>9g} {r['epsilon_spent']:>8.3g} {r['noise_multiplier']:>7.3g} "
            f"{r['steps']:>5d} {r['rank']:>7g} {r['exposure']:>8.2f} {r['max_exposure']:>5.2f} "
            f"{r['exposure_before']:>6.2f} {r['samples_with_secret']:>6d} "
            f"{r['samples_with_template']:>8d}"
        )
    return "\n".join(lines)


def _parse_epsilons(text: str) -> list[float]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if part:
            out.append(math.inf if part in ("inf", "infinity") else float(part))
    if not out:
        raise argparse.ArgumentTypeError("no ε given")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from fdkt_flwr.data import load_source
    from fdkt_flwr.models import load_causal_lm
    from fdkt_flwr.tasks import load_task

    p = argparse.ArgumentParser(
        prog="python -m fdkt_flwr.audit",
        description="Canary (Secret Sharer) audit of the DP generator.",
    )
    p.add_argument(
        "--epsilons",
        type=_parse_epsilons,
        default=[1.0, 8.0, math.inf],
        help="comma-separated budgets; inf = non-private (default 1,8,inf)",
    )
    p.add_argument("--out", type=Path, default=Path("audit.json"))
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--dataset", default="fine-food")
    p.add_argument("--num-texts", type=int, default=64, help="private texts (default 64)")
    p.add_argument("--repeats", type=int, default=4, help="canary copies planted")
    p.add_argument("--candidates", type=int, default=1000, help="|R| - 1")
    p.add_argument("--secret-length", type=int, default=6)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--accountant", default="prv", choices=["prv", "rdp"])
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-physical-batch-size", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--samples-per-label", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    source = load_source(args.dataset)
    task = load_task(args.dataset, source.label_names)
    codes = task.control_codes()
    rng = random.Random(args.seed)
    idx = rng.sample(range(len(source.train)), min(args.num_texts, len(source.train)))
    texts = [source.train.texts[i] for i in idx]
    text_codes = [codes[source.train.labels[i]] for i in idx]
    cfg = GeneratorTrainConfig(
        lora_rank=args.lora_rank,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_physical_batch_size=args.max_physical_batch_size,
        learning_rate=args.learning_rate,
        max_length=args.max_length,
        seed=args.seed,
    )
    rows = run_audit(
        lambda: load_causal_lm(args.model, fresh=True),
        texts,
        args.epsilons,
        control_codes=text_codes,
        repeats=args.repeats,
        num_candidates=args.candidates,
        secret_length=args.secret_length,
        delta=args.delta,
        max_grad_norm=args.max_grad_norm,
        accountant=args.accountant,
        train_cfg=cfg,
        samples_per_label=args.samples_per_label,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        progress=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    print(format_table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": args.model, "dataset": args.dataset, "results": rows}
    # JSON has no infinity: write ε = ∞ as the string "inf".
    args.out.write_text(json.dumps(_json_safe(payload), indent=2))
    print(f"wrote {args.out}")
    return 0


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


if __name__ == "__main__":
    raise SystemExit(main())
