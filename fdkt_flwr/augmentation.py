"""Server side of FDKT: select DP demonstrations, then augment them with the LLM.

Steps 3 and 4 of the method (see ``/work/shared/notes/fdkt-method.md``):

* :func:`select_demonstrations` — embed the demonstrations a client sent, cluster them
  (seeded k-means), show each cluster to the LLM in groups of ``samples_per_cluster`` and keep
  the samples it judges on-domain, correctly labelled and not redundant. An unusable answer keeps
  the whole group (counted as ``selection_fallbacks``), so a weak LLM can never empty a pool by
  babbling.
* :func:`augment` — per label, few-shot prompts built from varied combinations of the kept
  demonstrations ask for new samples of that label; answers are parsed tolerantly
  (:mod:`fdkt_flwr.parsing`) and validated (label, length, not a near copy of a demonstration,
  not a duplicate — also of earlier rounds). Prompting repeats, bounded by ``max_attempts``,
  until every label reaches its budget.
* :func:`zero_shot_augment` — the baseline without demonstrations.
* :class:`ClientPool` — per-client state (one-to-many, multi-task: each client has its own task);
  :class:`AugmentationService` — the pools of all clients plus the LLM, for a server strategy.
  ``serve_all`` serves a round's clients together: their work is written as steps that yield
  LLM requests (:data:`LLMSteps`), and :func:`drive_together` sends the requests of all clients
  in shared generate calls (fewer, fuller batches than one client after another).

Nothing here imports Flower; the LLM is anything implementing :class:`fdkt_flwr.llm.LLM` and the
encoder anything with ``encode(list[str]) -> np.ndarray``, so tests use scripted fakes.
Every function returns JSON-safe stats dicts.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import time
import zlib
from collections import Counter
from collections.abc import Generator, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import yaml

from fdkt_flwr.llm import LLM, Conversation, Generation, SamplingParams
from fdkt_flwr.parsing import parse_samples, parse_selection

Sample = tuple[str, int]  # (text, label index into TaskInfo.label_names)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class Encoder(Protocol):
    """A sentence encoder: one embedding row per text."""

    def encode(self, sentences: list[str]) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------
# Task and configuration
# --------------------------------------------------------------------------------------------


@dataclass
class TaskInfo:
    """What a client tells the server about its task (public words only, never data).

    ``label_descriptions`` maps a label name to a short description used in prompts.
    """

    name: str
    domain: str
    label_names: list[str]
    label_descriptions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.label_names:
            raise ValueError(f"task {self.name!r} has no labels")
        self.label_names = [str(n) for n in self.label_names]
        self.label_descriptions = dict(self.label_descriptions or {})

    def description(self, label: int) -> str:
        """Description of label ``label``, or its name when none was given."""
        name = self.label_names[label]
        return self.label_descriptions.get(name) or name

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (also accepted by :meth:`from_any`)."""
        return {
            "name": self.name,
            "domain": self.domain,
            "label_names": list(self.label_names),
            "label_descriptions": dict(self.label_descriptions),
        }

    @classmethod
    def from_any(cls, obj: Any) -> TaskInfo:
        """Build from a TaskInfo, a dict, or any object with the same attributes.

        ``label_descriptions`` may be a dict ``{name: description}`` or a list aligned with
        ``label_names`` (empty strings mean "none"), as in the task records clients send.
        """
        if isinstance(obj, TaskInfo):
            return obj
        get = obj.get if isinstance(obj, Mapping) else lambda k, d=None: getattr(obj, k, d)
        names = [str(n) for n in get("label_names")]
        descs = get("label_descriptions") or {}
        if isinstance(descs, Mapping):
            desc_map = {str(k): str(v) for k, v in descs.items() if v}
        else:
            desc_map = {n: str(d) for n, d in zip(names, descs, strict=False) if d}
        return cls(
            name=str(get("name")),
            domain=str(get("domain") or get("name")),
            label_names=names,
            label_descriptions=desc_map,
        )


@dataclass
class AugmentConfig:
    """Knobs of selection and augmentation (defaults suit SmolLM2-135M on CPU).

    Budgets: ``samples_per_label`` new samples per label per client per round (balanced), unless
    ``label_budget`` ({label name: n}) overrides some labels. Each attempt sends
    ``ceil(missing * oversample / samples_per_prompt)`` prompts per unfinished label, capped by
    ``max_prompts_per_label``; at most ``max_attempts`` attempts per round.
    """

    samples_per_label: int = 8
    label_budget: dict[str, int] | None = None
    demos_per_prompt: int = 2  # demonstrations of the target label shown per prompt
    other_label_demos: int = 0  # demonstrations of each *other* label shown for contrast
    samples_per_prompt: int = 3
    oversample: float = 1.5
    max_prompts_per_label: int = 16
    max_attempts: int = 4
    temperature: float = 0.8
    top_p: float = 0.9
    max_new_tokens: int = 160
    min_chars: int = 20
    max_chars: int = 1000
    max_demo_chars: int = 300  # demonstrations are truncated in prompts (context and CPU time)
    copy_threshold: float = 0.5  # char-5-gram similarity at or above which a sample is a copy
    keep_off_target: bool = False  # keep parsed samples labelled with a label not asked for
    selection_enabled: bool = True
    clusters: int = 4
    samples_per_cluster: int = 8
    selection_max_new_tokens: int = 48
    examples_per_label: int = 3  # generated samples per label kept in the stats for humans
    prompt_dir: str | None = None  # folder with <task>.yaml / default.yaml; None = conf/prompts

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AugmentConfig:
        """Build from a mapping, accepting ``kebab-case`` keys and ignoring unknown ones."""
        names = {f.name for f in fields(cls)}
        kw = {k.replace("-", "_"): v for k, v in d.items()}
        return cls(**{k: v for k, v in kw.items() if k in names})

    def budgets(self, task: TaskInfo) -> dict[int, int]:
        """Per-label sample budget for one client and round."""
        over = self.label_budget or {}
        return {
            i: max(0, int(over.get(name, self.samples_per_label)))
            for i, name in enumerate(task.label_names)
        }


# --------------------------------------------------------------------------------------------
# Prompt templates
# --------------------------------------------------------------------------------------------

_TEMPLATE_KEYS = (
    "system",
    "demo_format",
    "augment",
    "zero_shot",
    "selection_item",
    "selection",
)


@dataclass(frozen=True)
class PromptTemplates:
    """Prompt templates of one task (``str.format`` placeholders; see conf/prompts/default.yaml)."""

    system: str
    demo_format: str
    augment: str
    zero_shot: str
    selection_item: str
    selection: str
    source: str = ""


@functools.lru_cache(maxsize=64)
def load_prompts(task_name: str, prompt_dir: str | None = None) -> PromptTemplates:
    """Templates for ``task_name``: ``<dir>/<task>.yaml`` over ``<dir>/default.yaml``.

    ``prompt_dir`` defaults to ``conf/prompts`` of this repository. Keys missing in the task
    file come from the default file. Raises ValueError naming the file when a template has an
    unknown placeholder, so a typo fails at start-up, not in round 3.
    """
    base = Path(prompt_dir) if prompt_dir else CONF_DIR / "prompts"
    data: dict[str, Any] = {}
    sources = []
    for path in (base / "default.yaml", base / f"{task_name}.yaml"):
        if path.is_file():
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: expected a mapping of template names to strings")
            data.update({k: v for k, v in loaded.items() if k in _TEMPLATE_KEYS})
            sources.append(str(path))
    missing = [k for k in _TEMPLATE_KEYS if not isinstance(data.get(k), str)]
    if missing:
        raise ValueError(f"prompt templates in {base} lack {missing}")
    dummy = _placeholders("d", "l", "desc", "a, b", "- a: x", 3, "ex", "1. x")
    for k in _TEMPLATE_KEYS:
        try:
            data[k].format(**dummy)
        except (KeyError, IndexError, ValueError) as exc:
            msg = f"prompt template {k!r} from {sources}: bad placeholder {exc}"
            raise ValueError(msg) from None
    return PromptTemplates(**{k: data[k] for k in _TEMPLATE_KEYS}, source=";".join(sources))


def _placeholders(
    domain: str,
    label: str,
    description: str,
    labels: str,
    label_list: str,
    n: int,
    demonstrations: str,
    samples: str,
) -> dict[str, Any]:
    return {
        "domain": domain,
        "label": label,
        "label_description": description,
        "labels": labels,
        "label_list": label_list,
        "n": n,
        "demonstrations": demonstrations,
        "samples": samples,
        "text": "",
        "index": 0,
    }


def _truncate(text: str, max_chars: int) -> str:
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars].rsplit(" ", 1)[0]
    return cut + " ..."


def _label_list(task: TaskInfo) -> str:
    return "\n".join(f"- {n}: {task.description(i)}" for i, n in enumerate(task.label_names))


def _conversation(system: str, user: str) -> Conversation:
    conv = []
    if system.strip():
        conv.append({"role": "system", "content": system.strip()})
    conv.append({"role": "user", "content": user.strip()})
    return conv


def build_augment_prompt(
    task: TaskInfo,
    label: int,
    demos: Sequence[Sample],
    n: int,
    templates: PromptTemplates,
    max_demo_chars: int = 300,
) -> Conversation:
    """Chat conversation asking for ``n`` new samples of ``label`` given ``demos``.

    Without demonstrations the zero-shot template is used.
    """
    ph = _placeholders(
        task.domain,
        task.label_names[label],
        task.description(label),
        ", ".join(task.label_names),
        _label_list(task),
        n,
        "",
        "",
    )
    ph["demonstrations"] = "\n".join(
        templates.demo_format.format(
            **{
                **ph,
                "text": _truncate(t, max_demo_chars),
                "label": task.label_names[lbl],
                "label_description": task.description(lbl),
            }
        )
        for t, lbl in demos
    )
    body = (templates.augment if demos else templates.zero_shot).format(**ph)
    return _conversation(templates.system.format(**ph), body)


def build_selection_prompt(
    task: TaskInfo, items: Sequence[Sample], templates: PromptTemplates, max_demo_chars: int = 300
) -> Conversation:
    """Chat conversation showing ``items`` numbered 1..n and asking which to keep."""
    ph = _placeholders(
        task.domain, "", "", ", ".join(task.label_names), _label_list(task), len(items), "", ""
    )
    ph["samples"] = "\n".join(
        templates.selection_item.format(
            **{
                **ph,
                "index": i + 1,
                "text": _truncate(t, max_demo_chars),
                "label": task.label_names[lbl],
                "label_description": task.description(lbl),
            }
        )
        for i, (t, lbl) in enumerate(items)
    )
    return _conversation(templates.system.format(**ph), templates.selection.format(**ph))


# --------------------------------------------------------------------------------------------
# Text similarity, duplicates, diversity
# --------------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.casefold()))


def dedup_key(text: str) -> str:
    """Stable key for exact-duplicate detection (case, punctuation and spacing ignored)."""
    return hashlib.sha1(_norm(text).encode("utf-8")).hexdigest()[:16]


def shingles(text: str, n: int = 5) -> frozenset[str]:
    """Character ``n``-grams of the normalised text (the whole text if shorter)."""
    s = _norm(text)
    if len(s) <= n:
        return frozenset([s]) if s else frozenset()
    return frozenset(s[i : i + n] for i in range(len(s) - n + 1))


def copy_score(candidate: frozenset[str], reference: frozenset[str]) -> float:
    """How much ``candidate`` copies ``reference``: max(Jaccard, share of candidate in reference).

    The containment term catches a fragment cut out of a longer demonstration.
    """
    if not candidate or not reference:
        return 0.0
    inter = len(candidate & reference)
    return max(inter / len(candidate | reference), inter / len(candidate))


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n: unique word n-grams / all word n-grams over ``texts`` (0.0 when none)."""
    total, uniq = 0, set()
    for t in texts:
        words = t.casefold().split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        uniq.update(grams)
    return len(uniq) / total if total else 0.0


def similarity_to_demos(
    texts: Sequence[str], demos: Sequence[str], encoder: Encoder | None = None
) -> tuple[float | None, str]:
    """Mean over ``texts`` of the highest similarity to any demonstration.

    Cosine of encoder embeddings when an encoder is given (method ``"cosine"``), else the
    char-n-gram :func:`copy_score` (``"ngram"``). None when either side is empty.
    """
    if not texts or not demos:
        return None, "none"
    if encoder is not None:
        try:
            a = _unit(np.asarray(encoder.encode(list(texts)), dtype=np.float64))
            b = _unit(np.asarray(encoder.encode(list(demos)), dtype=np.float64))
            return float((a @ b.T).max(axis=1).mean()), "cosine"
        except Exception:  # a broken encoder must not lose the round; fall back to n-grams
            pass
    ref = [shingles(d) for d in demos]
    scores = [max(copy_score(shingles(t), r) for r in ref) for t in texts]
    return float(np.mean(scores)), "ngram"


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(x)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


# --------------------------------------------------------------------------------------------
# Selection (step 3)
# --------------------------------------------------------------------------------------------


def _seed_from(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def cluster_demonstrations(
    demos: Sequence[Sample], encoder: Encoder, k: int, rng: np.random.Generator
) -> list[list[int]]:
    """Group demonstration indices by seeded k-means on their embeddings (k = min(k, n)).

    Members of a cluster are ordered by distance to its centroid (most typical first).
    """
    n = len(demos)
    if n == 0:
        return []
    k = max(1, min(int(k), n))
    emb = _unit(np.asarray(encoder.encode([t for t, _ in demos]), dtype=np.float64))
    if emb.shape[0] != n:
        raise ValueError(f"encoder returned {emb.shape[0]} embeddings for {n} texts")
    if k == 1:
        labels = np.zeros(n, dtype=int)
        centers = emb.mean(axis=0, keepdims=True)
    else:
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, random_state=_seed_from(rng), n_init=4)
        labels = km.fit_predict(emb)
        centers = km.cluster_centers_
    groups: list[list[int]] = []
    for c in range(centers.shape[0]):
        members = [i for i in range(n) if labels[i] == c]
        if members:
            dist = np.linalg.norm(emb[members] - centers[c], axis=1)
            groups.append([members[j] for j in np.argsort(dist, kind="stable")])
    return groups


def select_demonstrations(
    demos: Sequence[Sample],
    task: TaskInfo,
    llm: LLM | None,
    encoder: Encoder | None,
    cfg: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[list[Sample], dict[str, Any]]:
    """Keep the demonstrations the LLM judges on-domain, correctly labelled and not redundant.

    Demonstrations are clustered (``cfg.clusters``) and each cluster is shown in groups of at
    most ``cfg.samples_per_cluster`` (similar samples side by side, so redundancy is visible).
    A group whose answer cannot be parsed is kept whole and counted in ``selection_fallbacks``.
    With selection disabled, no LLM or no encoder, all demonstrations are kept.

    Returns the kept demonstrations in their original order and JSON-safe stats.
    """
    return drive(selection_steps(demos, task, encoder, cfg, rng, use_llm=llm is not None), llm)


def selection_steps(
    demos: Sequence[Sample],
    task: TaskInfo,
    encoder: Encoder | None,
    cfg: AugmentConfig,
    rng: np.random.Generator,
    use_llm: bool = True,
) -> LLMSteps[tuple[list[Sample], dict[str, Any]]]:
    """:func:`select_demonstrations` as steps (:func:`drive`): at most one LLM request."""
    demos = list(demos)
    stats: dict[str, Any] = {
        "demonstrations_received": len(demos),
        "demonstrations_kept": len(demos),
        "selection_enabled": bool(cfg.selection_enabled),
        "selection_prompts": 0,
        "selection_fallbacks": 0,
        "clusters": 0,
        "kept_per_label": {},
    }
    if not demos or not cfg.selection_enabled or not use_llm or encoder is None:
        stats["kept_per_label"] = _label_counts(demos, task)
        return demos, stats
    templates = load_prompts(task.name, cfg.prompt_dir)
    groups = cluster_demonstrations(demos, encoder, cfg.clusters, rng)
    stats["clusters"] = len(groups)
    size = max(1, int(cfg.samples_per_cluster))
    chunks = [g[i : i + size] for g in groups for i in range(0, len(g), size)]
    convs = [
        build_selection_prompt(task, [demos[j] for j in chunk], templates, cfg.max_demo_chars)
        for chunk in chunks
    ]
    params = SamplingParams(
        max_new_tokens=cfg.selection_max_new_tokens, temperature=0.0, top_p=1.0,
        seed=_seed_from(rng),
    )  # fmt: skip
    reply = yield convs, params
    gens = reply.generations
    stats["selection_prompts"] = len(convs)
    stats["llm_tokens"] = sum(g.num_tokens for g in gens)
    stats["llm_seconds"] = round(reply.seconds, 4)
    kept_idx: set[int] = set()
    for chunk, gen in zip(chunks, gens, strict=True):
        chosen = parse_selection(gen.text, len(chunk))
        if chosen is None:
            stats["selection_fallbacks"] += 1
            kept_idx.update(chunk)
        else:
            kept_idx.update(chunk[i] for i in chosen)
    kept = [demos[i] for i in sorted(kept_idx)]
    stats["demonstrations_kept"] = len(kept)
    stats["kept_per_label"] = _label_counts(kept, task)
    return kept, stats


def _generate_checked(
    llm: LLM | None, convs: list[Conversation], params: SamplingParams
) -> list[Generation]:
    if not convs:
        return []
    if llm is None:
        raise RuntimeError("these steps need an LLM and none was given")
    gens = llm.generate(convs, params)
    if len(gens) != len(convs):
        raise RuntimeError(f"LLM returned {len(gens)} answers for {len(convs)} prompts")
    return gens


@dataclass(frozen=True)
class LLMReply:
    """The answer to one step's request: its generations, and its share of the call's time."""

    generations: list[Generation]
    seconds: float


LLMRequest = tuple[list[Conversation], SamplingParams]
_T = TypeVar("_T")
# Server work that needs the LLM is written as a generator that yields each request (the
# prompts and decoding settings) and receives an LLMReply: whoever drives it decides how the
# requests reach the LLM. One client alone: `drive`. Several clients: `drive_together` puts
# their requests into shared calls, so one generate call serves every client's attempt.
LLMSteps = Generator[LLMRequest, LLMReply, _T]


def drive(steps: LLMSteps[_T], llm: LLM | None) -> _T:
    """Run ``steps`` to the end, one LLM call per request; errors propagate."""
    (outcome,) = drive_together({0: steps}, llm).values()
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _merged_seed(seeds: Sequence[int | None]) -> int | None:
    if len(seeds) == 1:
        return seeds[0]
    if any(s is None for s in seeds):
        return None
    return int(np.random.SeedSequence([int(s) & 0xFFFFFFFF for s in seeds]).generate_state(1)[0])


def _call_together(
    items: list[tuple[Hashable, LLMRequest]], llm: LLM | None
) -> dict[Hashable, LLMReply | Exception]:
    """One LLM call for requests that share decoding settings; a failed shared call is retried
    one request at a time, so that only the request that cannot be served fails."""
    if len(items) > 1:
        convs = [c for _, (cs, _) in items for c in cs]
        first = items[0][1][1]
        params = SamplingParams(max_new_tokens=first.max_new_tokens,
                                temperature=first.temperature, top_p=first.top_p,
                                seed=_merged_seed([p.seed for _, (_, p) in items]))
        start = time.perf_counter()
        try:
            gens = _generate_checked(llm, convs, params)
        except Exception:
            pass  # retried per request below
        else:
            seconds = time.perf_counter() - start
            out: dict[Hashable, LLMReply | Exception] = {}
            total = sum(g.num_tokens for g in gens) or len(gens)
            lo = 0
            for key, (cs, _) in items:
                mine = gens[lo : lo + len(cs)]
                lo += len(cs)
                # Time is shared by tokens written, so per-client seconds add up to the call.
                share = (sum(g.num_tokens for g in mine) or len(mine)) / total
                out[key] = LLMReply(mine, seconds * share)
            return out
    out = {}
    for key, (cs, p) in items:
        start = time.perf_counter()
        try:
            out[key] = LLMReply(_generate_checked(llm, cs, p), time.perf_counter() - start)
        except Exception as exc:
            out[key] = exc
    return out


def drive_together(
    steps: Mapping[Hashable, LLMSteps[_T]], llm: LLM | None
) -> dict[Hashable, _T | Exception]:
    """Run several steps side by side, sending their pending requests in shared LLM calls.

    Each tick gathers the one pending request of every unfinished step and makes one call per
    distinct decoding setting (new tokens, temperature, top-p) with all their prompts; the
    shared call's seed derives from the requests' seeds in ``steps`` order, so a run is
    reproducible for the same clients served together. An exception (from a step, or from an
    LLM call that fails even for that step alone) ends that step only and is its result.
    """
    results: dict[Hashable, _T | Exception] = {}
    pending: dict[Hashable, LLMRequest] = {}

    def advance(key: Hashable, reply: LLMReply | None) -> None:
        try:
            pending[key] = next(steps[key]) if reply is None else steps[key].send(reply)
        except StopIteration as stop:
            results[key] = stop.value
        except Exception as exc:
            results[key] = exc

    for key in steps:
        advance(key, None)
    while pending:
        batch, pending = pending, {}
        groups: dict[tuple[int, float, float], list[tuple[Hashable, LLMRequest]]] = {}
        for key, req in batch.items():
            p = req[1]
            groups.setdefault((p.max_new_tokens, p.temperature, p.top_p), []).append((key, req))
        for items in groups.values():
            for key, reply in _call_together(items, llm).items():
                if isinstance(reply, Exception):
                    steps[key].close()
                    results[key] = reply
                else:
                    advance(key, reply)
    return {key: results[key] for key in steps}


def _label_counts(samples: Iterable[Sample], task: TaskInfo) -> dict[str, int]:
    counts = Counter(lbl for _, lbl in samples)
    return {name: int(counts.get(i, 0)) for i, name in enumerate(task.label_names)}


# --------------------------------------------------------------------------------------------
# Augmentation (step 4)
# --------------------------------------------------------------------------------------------


# Small models describe a sample instead of writing one ("A review of a dessert that ...") or
# echo the instruction ("Write a new review of ...", "To create a short review, ...").
_META = re.compile(
    r"^\W*(?:(?:(?:here\s+is|this\s+is)\s+)?(?:a|an|one|another)\s+(?:new\s+)?(?:[\w-]+\s+)?"
    r"(?:review|sample|example|text|article|post|comment)s?\s+(?:of|about|for|on|from|that|which)\b"
    r"|write\b|to\s+(?:create|write)\b)",
    re.IGNORECASE,
)


class _Validator:
    """Validation state of one round: budgets, seen keys, reference shingles, drop counts."""

    def __init__(
        self,
        task: TaskInfo,
        cfg: AugmentConfig,
        budgets: dict[int, int],
        references: Sequence[str],
        seen: set[str],
    ) -> None:
        self.task, self.cfg, self.budgets = task, cfg, budgets
        self.refs = [shingles(t) for t in references]
        self.seen = seen
        self.accepted: dict[int, list[str]] = {i: [] for i in budgets}
        self.accepted_sh: list[frozenset[str]] = []
        self.round_keys: set[str] = set()
        self.dropped: Counter[str] = Counter()

    def missing(self) -> dict[int, int]:
        have = {i: len(v) for i, v in self.accepted.items()}
        return {i: b - have[i] for i, b in self.budgets.items() if have[i] < b}

    def offer(self, text: str, label: int, target: int) -> None:
        cfg = self.cfg
        text = " ".join(text.split())
        if not 0 <= label < len(self.task.label_names):
            self.dropped["unknown_label"] += 1  # parse_samples guarantees this never happens
            return
        if label != target and not cfg.keep_off_target:
            self.dropped["off_target"] += 1
            return
        if _META.match(text):
            self.dropped["meta"] += 1
            return
        if len(text) < cfg.min_chars:
            self.dropped["too_short"] += 1
            return
        if len(text) > cfg.max_chars:
            self.dropped["too_long"] += 1
            return
        key = dedup_key(text)
        if key in self.seen or key in self.round_keys:
            self.dropped["duplicate"] += 1
            return
        sh = shingles(text)
        if any(copy_score(sh, r) >= cfg.copy_threshold for r in self.refs):
            self.dropped["near_copy"] += 1
            return
        if any(copy_score(sh, a) >= cfg.copy_threshold for a in self.accepted_sh):
            self.dropped["near_duplicate"] += 1
            return
        if len(self.accepted[label]) >= self.budgets.get(label, 0):
            self.dropped["over_budget"] += 1
            return
        self.round_keys.add(key)
        self.accepted_sh.append(sh)
        self.accepted[label].append(text)


def _pick_demos(
    pool: list[Sample], k: int, rng: np.random.Generator, used: set[tuple[int, ...]]
) -> list[Sample]:
    """``k`` demonstrations from ``pool``, preferring a combination not used yet this round."""
    if k <= 0 or not pool:
        return []
    k = min(k, len(pool))
    choice: tuple[int, ...] = ()
    for _ in range(8):
        choice = tuple(sorted(int(i) for i in rng.choice(len(pool), size=k, replace=False)))
        if choice not in used:
            break
    used.add(choice)
    order = list(choice)
    rng.shuffle(order)  # position in the prompt matters to small models; vary it too
    return [pool[i] for i in order]


def _drop_last_line(text: str) -> tuple[str, int]:
    """``text`` without its last non-empty line, and 1 if a line was removed."""
    lines = text.rstrip().splitlines()
    if not lines:
        return text, 0
    return "\n".join(lines[:-1]), 1


def _generation_steps(
    task: TaskInfo,
    cfg: AugmentConfig,
    rng: np.random.Generator,
    demos: Sequence[Sample],
    references: Sequence[str],
    seen: set[str],
    zero_shot: bool,
) -> tuple[list[Sample], dict[str, Any]]:
    """Prompt, parse and validate until every label meets its budget or attempts run out.

    Steps (see :func:`drive`): yields one request per attempt.
    """
    templates = load_prompts(task.name, cfg.prompt_dir)
    budgets = cfg.budgets(task)
    by_label: dict[int, list[Sample]] = {i: [] for i in range(len(task.label_names))}
    for t, lbl in demos:
        if 0 <= lbl < len(task.label_names):
            by_label[lbl].append((t, lbl))
    val = _Validator(task, cfg, budgets, references, seen)
    used: dict[int, set[tuple[int, ...]]] = {i: set() for i in by_label}
    prompts = parsed = tokens = attempts = 0
    per_prompt: Counter[int] = Counter()  # how many records each answer yielded
    seconds = 0.0
    zero_shot_labels: set[str] = set()
    spp = max(1, int(cfg.samples_per_prompt))
    for _ in range(max(0, int(cfg.max_attempts))):
        missing = val.missing()
        if not missing:
            break
        attempts += 1
        convs: list[Conversation] = []
        targets: list[int] = []
        for label, need in missing.items():
            n_prompts = min(cfg.max_prompts_per_label, math.ceil(need * cfg.oversample / spp))
            for _ in range(max(1, n_prompts)):
                shown: list[Sample] = []
                if not zero_shot:
                    shown = _pick_demos(by_label[label], cfg.demos_per_prompt, rng, used[label])
                    for other, pool in by_label.items():
                        if other != label:
                            shown += _pick_demos(pool, cfg.other_label_demos, rng, set())
                    if not shown:
                        zero_shot_labels.add(task.label_names[label])
                    elif len(shown) > 1:
                        shown = [shown[i] for i in rng.permutation(len(shown))]
                convs.append(
                    build_augment_prompt(task, label, shown, spp, templates, cfg.max_demo_chars)
                )
                targets.append(label)
        params = SamplingParams(
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
            seed=_seed_from(rng),
        )  # fmt: skip
        reply = yield convs, params
        gens = reply.generations
        seconds += reply.seconds
        prompts += len(convs)
        for gen, target in zip(gens, targets, strict=True):
            tokens += gen.num_tokens
            text = gen.text
            if gen.num_tokens >= params.max_new_tokens:
                # Cut off by the token limit: the last line is an unfinished sample.
                text, cut = _drop_last_line(text)
                val.dropped["truncated"] += cut
            records, drops = parse_samples(text, task.label_names, default_label=target)
            val.dropped.update(drops)
            parsed += len(records)
            per_prompt[len(records)] += 1
            for text, lbl in records:
                val.offer(text, lbl, target)
    samples = [(t, lbl) for lbl in sorted(val.accepted) for t in val.accepted[lbl]]
    order = rng.permutation(len(samples))  # do not hand the client label-sorted data
    samples = [samples[i] for i in order]
    seen.update(val.round_keys)
    names = task.label_names
    stats: dict[str, Any] = {
        "mode": "zero_shot" if zero_shot else "few_shot",
        "attempts": attempts,
        "prompts_sent": prompts,
        "samples_parsed": parsed,
        "parsed_per_prompt": {str(k): per_prompt[k] for k in sorted(per_prompt)},
        "dropped": dict(sorted(val.dropped.items())),
        "sent": len(samples),
        "budget": {names[i]: b for i, b in budgets.items()},
        "label_counts": {names[i]: len(v) for i, v in val.accepted.items()},
        "budget_met": not val.missing(),
        "zero_shot_labels": sorted(zero_shot_labels),
        "llm_tokens": tokens,
        "llm_seconds": round(seconds, 4),
        "tokens_per_s": round(tokens / seconds, 2) if seconds > 0 else None,
        "examples": {names[i]: v[: cfg.examples_per_label] for i, v in val.accepted.items()},
    }
    return samples, stats


def _quality_stats(
    samples: Sequence[Sample], references: Sequence[str], encoder: Encoder | None
) -> dict[str, Any]:
    texts = [t for t, _ in samples]
    sim, method = similarity_to_demos(texts, references, encoder)
    return {
        "distinct_1": round(distinct_n(texts, 1), 4),
        "distinct_2": round(distinct_n(texts, 2), 4),
        "similarity_to_demos": None if sim is None else round(sim, 4),
        "similarity_method": method,
    }


def augment(
    pool: ClientPool,
    task: TaskInfo | None,
    llm: LLM,
    cfg: AugmentConfig,
    round: int,
    rng: np.random.Generator,
    encoder: Encoder | None = None,
) -> tuple[list[Sample], dict[str, Any]]:
    """Generate this round's fresh samples for one client from its kept demonstrations.

    Uses ``pool.kept`` (or all received demonstrations when selection has not run). Labels
    without any demonstration fall back to the zero-shot prompt (listed in
    ``zero_shot_labels``). Samples seen in earlier rounds of this pool are never sent again;
    the pool's seen-set and cumulative totals are updated. ``task=None`` means ``pool.task``.

    Returns ``(samples, stats)``: samples are ``(text, label_index)`` in shuffled order; stats
    is JSON-safe with keys ``client, task, round, demonstrations_received,
    demonstrations_kept, selection_prompts, selection_fallbacks, mode, attempts, prompts_sent,
    samples_parsed, parsed_per_prompt, dropped`` (by reason), ``sent, budget, label_counts,
    budget_met, zero_shot_labels, llm_tokens, llm_seconds, tokens_per_s, examples`` (a few
    texts per label), ``distinct_1, distinct_2, similarity_to_demos, similarity_method``.
    """
    return drive(augment_steps(pool, task, cfg, round, rng, encoder), llm)


def augment_steps(
    pool: ClientPool,
    task: TaskInfo | None,
    cfg: AugmentConfig,
    round: int,
    rng: np.random.Generator,
    encoder: Encoder | None = None,
) -> LLMSteps[tuple[list[Sample], dict[str, Any]]]:
    """:func:`augment` as steps (:func:`drive`): one LLM request per attempt."""
    task = pool.task if task is None else TaskInfo.from_any(task)
    demos = pool.kept if pool.kept is not None else pool.demonstrations
    refs = [t for t, _ in pool.demonstrations]
    samples, stats = yield from _generation_steps(task, cfg, rng, demos, refs, pool.seen, False)
    stats.update(_quality_stats(samples, refs, encoder))
    stats = {
        "client": pool.client_id,
        "task": task.name,
        "round": int(round),
        "demonstrations_received": len(pool.demonstrations),
        "demonstrations_kept": len(demos),
        **pool.selection_stats_brief(),
        **stats,
    }
    pool.record_round(int(round), stats)
    return samples, stats


def zero_shot_augment(
    task: TaskInfo,
    llm: LLM,
    cfg: AugmentConfig,
    rng: np.random.Generator,
    seen: set[str] | None = None,
    encoder: Encoder | None = None,
) -> tuple[list[Sample], dict[str, Any]]:
    """Baseline: generate samples from label names and the domain description only.

    ``seen`` (updated in place) removes samples sent before, as in :func:`augment`.
    """
    return drive(zero_shot_steps(task, cfg, rng, seen, encoder), llm)


def zero_shot_steps(
    task: TaskInfo,
    cfg: AugmentConfig,
    rng: np.random.Generator,
    seen: set[str] | None = None,
    encoder: Encoder | None = None,
) -> LLMSteps[tuple[list[Sample], dict[str, Any]]]:
    """:func:`zero_shot_augment` as steps (:func:`drive`)."""
    task = TaskInfo.from_any(task)
    seen = set() if seen is None else seen
    samples, stats = yield from _generation_steps(task, cfg, rng, [], [], seen, True)
    stats.update(_quality_stats(samples, [], encoder))
    stats["task"] = task.name
    return samples, stats


# --------------------------------------------------------------------------------------------
# Per-client pools and the server-side service
# --------------------------------------------------------------------------------------------

_COUNTERS = (
    "prompts_sent",
    "samples_parsed",
    "sent",
    "llm_tokens",
    "selection_prompts",
    "selection_fallbacks",
)


class ClientPool:
    """Server-side state of one client: its task, demonstrations, selection and history.

    ``demonstrations`` are all valid demonstrations received (deduplicated), ``kept`` those that
    survived selection (None until selection runs), ``seen`` the dedup keys of every sample
    already sent (so each round sends fresh ones), ``totals`` cumulative counters.
    """

    def __init__(self, client_id: str, task: TaskInfo) -> None:
        self.client_id = str(client_id)
        self.task = TaskInfo.from_any(task)
        self.demonstrations: list[Sample] = []
        self.kept: list[Sample] | None = None
        self.seen: set[str] = set()
        self.totals: Counter[str] = Counter()
        self.dropped_totals: Counter[str] = Counter()
        self.rounds: list[int] = []
        self.selection_stats: dict[str, Any] = {}

    def add_demonstrations(self, demos: Iterable[Sample], replace: bool = False) -> dict[str, int]:
        """Store demonstrations ``(text, label index)``; invalid and duplicate ones are counted.

        Any change resets ``kept`` so the next round reruns selection.
        """
        if replace:
            self.demonstrations = []
        have = {dedup_key(t) for t, _ in self.demonstrations}
        stats = {"received": 0, "added": 0, "invalid": 0, "duplicate": 0}
        for item in demos:
            stats["received"] += 1
            try:
                text, label = str(item[0]), int(item[1])
            except (TypeError, ValueError, IndexError):
                stats["invalid"] += 1
                continue
            if not text.strip() or not 0 <= label < len(self.task.label_names):
                stats["invalid"] += 1
                continue
            key = dedup_key(text)
            if key in have:
                stats["duplicate"] += 1
                continue
            have.add(key)
            self.demonstrations.append((text.strip(), label))
            stats["added"] += 1
        if stats["added"] or replace:
            self.kept = None
        return stats

    def select(
        self, llm: LLM | None, encoder: Encoder | None, cfg: AugmentConfig, rng: np.random.Generator
    ) -> dict[str, Any]:
        """Run :func:`select_demonstrations` on all demonstrations and store the kept ones."""
        return drive(self.select_steps(encoder, cfg, rng, use_llm=llm is not None), llm)

    def select_steps(
        self, encoder: Encoder | None, cfg: AugmentConfig, rng: np.random.Generator,
        use_llm: bool = True,
    ) -> LLMSteps[dict[str, Any]]:
        """:meth:`select` as steps (:func:`drive`)."""
        self.kept, stats = yield from selection_steps(
            self.demonstrations, self.task, encoder, cfg, rng, use_llm
        )
        self.selection_stats = stats
        self.totals["selection_prompts"] += stats.get("selection_prompts", 0)
        self.totals["selection_fallbacks"] += stats.get("selection_fallbacks", 0)
        return stats

    def selection_stats_brief(self) -> dict[str, Any]:
        """Selection counters for the round stats (zeros when selection has not run)."""
        return {
            "selection_prompts": int(self.selection_stats.get("selection_prompts", 0)),
            "selection_fallbacks": int(self.selection_stats.get("selection_fallbacks", 0)),
        }

    def record_round(self, round: int, stats: Mapping[str, Any]) -> None:
        """Add one round's stats to the cumulative totals."""
        self.rounds.append(int(round))
        for k in ("prompts_sent", "samples_parsed", "sent", "llm_tokens"):
            self.totals[k] += int(stats.get(k, 0) or 0)
        self.dropped_totals.update(stats.get("dropped", {}))

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe snapshot (for checkpoints)."""
        return {
            "client_id": self.client_id,
            "task": self.task.to_dict(),
            "demonstrations": [[t, lbl] for t, lbl in self.demonstrations],
            "kept": None if self.kept is None else [[t, lbl] for t, lbl in self.kept],
            "seen": sorted(self.seen),
            "totals": dict(self.totals),
            "dropped_totals": dict(self.dropped_totals),
            "rounds": list(self.rounds),
            "selection_stats": self.selection_stats,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` output."""
        self.client_id = str(state["client_id"])
        self.task = TaskInfo.from_any(state["task"])
        self.demonstrations = [(str(t), int(lbl)) for t, lbl in state["demonstrations"]]
        kept = state.get("kept")
        self.kept = None if kept is None else [(str(t), int(lbl)) for t, lbl in kept]
        self.seen = set(state.get("seen", []))
        self.totals = Counter({k: int(v) for k, v in state.get("totals", {}).items()})
        self.dropped_totals = Counter(
            {k: int(v) for k, v in state.get("dropped_totals", {}).items()}
        )
        self.rounds = [int(r) for r in state.get("rounds", [])]
        self.selection_stats = dict(state.get("selection_stats", {}))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> ClientPool:
        """New pool from :meth:`state_dict` output."""
        pool = cls(str(state["client_id"]), TaskInfo.from_any(state["task"]))
        pool.load_state_dict(state)
        return pool

    def summary(self) -> dict[str, Any]:
        """Cumulative, JSON-safe summary of this client."""
        return {
            "client": self.client_id,
            "task": self.task.name,
            "rounds": list(self.rounds),
            "demonstrations": len(self.demonstrations),
            "kept": None if self.kept is None else len(self.kept),
            "seen": len(self.seen),
            **{k: int(self.totals.get(k, 0)) for k in _COUNTERS},
            "dropped": dict(sorted(self.dropped_totals.items())),
        }


def stable_rng(seed: int, *parts: int | str) -> np.random.Generator:
    """A generator seeded by ``seed`` and ``parts`` (strings hashed stably, not with ``hash``)."""
    ints = [int(seed) & 0xFFFFFFFF]
    for p in parts:
        ints.append(zlib.crc32(p.encode("utf-8")) if isinstance(p, str) else int(p) & 0xFFFFFFFF)
    return np.random.default_rng(ints)


class AugmentationService:
    """The server's pool logic, independent of Flower: one :class:`ClientPool` per client.

    A strategy calls :meth:`receive` when a client's demonstrations arrive and :meth:`serve`
    each round to get that client's fresh samples. Randomness derives from ``(seed, round,
    client)``, so results do not depend on the order in which clients are served.
    """

    def __init__(
        self,
        llm: LLM,
        cfg: AugmentConfig | None = None,
        encoder: Encoder | None = None,
        seed: int = 0,
    ) -> None:
        self.llm = llm
        self.cfg = cfg or AugmentConfig()
        self.encoder = encoder
        self.seed = int(seed)
        self.pools: dict[str, ClientPool] = {}

    def receive(
        self, client_id: str, task: TaskInfo | Mapping[str, Any], demos: Iterable[Sample]
    ) -> dict[str, int]:
        """Store a client's task and demonstrations (a changed task replaces the pool)."""
        info = TaskInfo.from_any(task)
        pool = self.pools.get(str(client_id))
        if pool is None or pool.task != info:
            pool = self.pools[str(client_id)] = ClientPool(str(client_id), info)
        return pool.add_demonstrations(demos)

    def serve(
        self, client_id: str, server_round: int, zero_shot: bool = False
    ) -> tuple[list[Sample], dict[str, Any]]:
        """This round's samples for ``client_id`` (selection runs first when needed);
        ``zero_shot`` writes the baseline's samples, from the task description alone."""
        return drive(self._serve_steps(client_id, server_round, zero_shot), self.llm)

    def serve_all(
        self, client_ids: Iterable[str], server_round: int, zero_shot: bool = False
    ) -> dict[str, tuple[list[Sample], dict[str, Any]] | Exception]:
        """:meth:`serve` for several clients at once, their LLM requests in shared calls.

        Each client's attempts run in lockstep with the others' (:func:`drive_together`), so
        a round costs about as many generate calls as the slowest client needs instead of the
        sum over clients, and the calls are fuller. Returns, per client id, ``(samples,
        stats)`` or the exception that ended that client's augmentation (others go on).
        Clients are served in sorted order, whatever order they come in.
        """
        ids = sorted({str(c) for c in client_ids})
        steps = {cid: self._serve_steps(cid, server_round, zero_shot) for cid in ids}
        return drive_together(steps, self.llm)  # type: ignore[return-value]

    def _serve_steps(
        self, client_id: str, server_round: int, zero_shot: bool = False
    ) -> LLMSteps[tuple[list[Sample], dict[str, Any]]]:
        pool = self.pools.get(str(client_id))
        if pool is None:
            raise KeyError(f"no demonstrations received from client {client_id!r}")
        rng = stable_rng(self.seed, int(server_round), pool.client_id)
        if zero_shot:
            samples, stats = yield from zero_shot_steps(
                pool.task, self.cfg, rng, seen=pool.seen, encoder=self.encoder
            )
            stats.update(client=pool.client_id, round=int(server_round))
            pool.record_round(int(server_round), stats)
            return samples, stats
        sel: dict[str, Any] | None = None
        if pool.kept is None:
            sel_rng = stable_rng(self.seed, "selection", pool.client_id)
            sel = yield from pool.select_steps(self.encoder, self.cfg, sel_rng)
        samples, stats = yield from augment_steps(
            pool, None, self.cfg, server_round, rng, self.encoder
        )
        if sel is not None:
            stats["selection"] = sel
        return samples, stats

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe snapshot of all pools."""
        return {"seed": self.seed, "pools": {cid: p.state_dict() for cid, p in self.pools.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the pools from :meth:`state_dict` output."""
        self.seed = int(state.get("seed", self.seed))
        self.pools = {
            str(cid): ClientPool.from_state_dict(ps) for cid, ps in state.get("pools", {}).items()
        }
