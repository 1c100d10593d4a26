"""Selection and augmentation with a scripted fake LLM and a fake encoder (no model, no Flower)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from fdkt_flwr.augmentation import (
    AugmentationService,
    AugmentConfig,
    ClientPool,
    TaskInfo,
    augment,
    build_augment_prompt,
    cluster_demonstrations,
    copy_score,
    distinct_n,
    load_prompts,
    select_demonstrations,
    shingles,
    zero_shot_augment,
)
from fdkt_flwr.llm import Conversation, Generation, LLMStats, SamplingParams, ScriptedLLM

TOY = TaskInfo(
    name="toy",
    domain="toy snack reviews",
    label_names=["pos", "neg"],
    label_descriptions={"pos": "a happy review", "neg": "a sad review"},
)
NEWS = TaskInfo(name="toy-news", domain="toy news", label_names=["sports", "politics", "tech"])

DEMOS = [
    ("Crunchy pretzels with the perfect amount of salt, my kids adore them.", 0),
    ("This dark chocolate melts slowly and tastes of cherries and coffee.", 0),
    ("Fresh tortilla chips arrived quickly and the salsa pairing was superb.", 0),
    ("The granola clusters are big, sweet and full of toasted almonds.", 0),
    ("Stale crackers that crumbled into dust before I opened the box.", 1),
    ("The gummy bears tasted like plastic and stuck to my teeth.", 1),
    ("Popcorn kernels mostly failed to pop and the butter smelled rancid.", 1),
    ("Overpriced trail mix with barely any nuts, mostly raisins.", 1),
]


class FakeEncoder:
    """Deterministic bag-of-character-trigram embedding (stands in for a sentence encoder)."""

    def encode(self, sentences: list[str]) -> np.ndarray:
        out = np.zeros((len(sentences), 64))
        for i, s in enumerate(sentences):
            s = s.lower()
            for j in range(len(s) - 2):
                out[i, sum(map(ord, s[j : j + 3])) % 64] += 1.0
        return out


def _user(conv: Conversation) -> str:
    return conv[-1]["content"]


def _target(conv: Conversation, task: TaskInfo) -> str:
    """The label an augmentation prompt asks for (its description or name is in the prompt)."""
    text = _user(conv)
    hits = [n for i, n in enumerate(task.label_names) if task.description(i) in text]
    return hits[-1]


_WORDS = [
    "apple", "bagel", "cocoa", "dates", "fennel", "ginger", "honey", "iced", "jam", "kale",
    "lemon", "mango", "nutmeg", "oats", "pepper", "quince", "raisin", "salt", "toffee", "udon",
    "vanilla", "walnut", "yogurt", "zucchini", "crisp", "chewy", "tangy", "smoky", "bland",
    "bitter", "sweet", "sour", "fresh", "stale", "soggy", "crunchy", "creamy", "rich", "light",
    "heavy", "cheap", "pricey", "tiny", "huge", "box", "bag", "jar", "tin", "tub", "pack",
]  # fmt: skip


def unique_text(k: int, head: str = "") -> str:
    """A distinct, natural-length text for counter ``k`` (no shared template, no near-dups)."""
    rng = np.random.default_rng(k)
    words = " ".join(rng.choice(_WORDS, size=10, replace=False))
    return f"{head}{words} {k}."


class Generator:
    """A fake LLM writing unique, on-target, well-formed samples; records every prompt."""

    def __init__(self, task: TaskInfo, per_answer: int = 3, extra: str = "") -> None:
        self.task, self.per_answer, self.extra = task, per_answer, extra
        self.n = 0
        self.prompts: list[str] = []
        self.stats = LLMStats()

    def __call__(self, conv: Conversation) -> str:
        self.prompts.append(_user(conv))
        label = _target(conv, self.task)
        lines = []
        for _ in range(self.per_answer):
            self.n += 1
            lines.append(f"- {unique_text(self.n, f'{label} ')}")
        return "Here are the samples:\n" + "\n".join(lines) + self.extra

    def generate(self, convs: list[Conversation], params: SamplingParams) -> list[Generation]:
        return [Generation(self(c), 10) for c in convs]


def _cfg(**kw: object) -> AugmentConfig:
    base = {"samples_per_label": 4, "samples_per_prompt": 3, "max_attempts": 3, "min_chars": 10,
            "clusters": 2, "samples_per_cluster": 3}  # fmt: skip
    base.update(kw)
    return AugmentConfig(**base)  # type: ignore[arg-type]


def _pool(
    task: TaskInfo = TOY, demos: list[tuple[str, int]] = DEMOS, cid: str = "c0"
) -> ClientPool:
    pool = ClientPool(cid, task)
    pool.add_demonstrations(demos)
    return pool


# ----------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------


def test_prompt_templates_fallback_override_and_errors(tmp_path: Path) -> None:
    default = load_prompts("no-such-task")
    assert "default.yaml" in default.source
    food = load_prompts("fine-food")
    assert "fine-food.yaml" in food.source and food.selection == default.selection
    (tmp_path / "default.yaml").write_text(
        "system: S {domain}\ndemo_format: '* {text}'\n"
        'augment: "A {n} {label}\\n{demonstrations}"\n'
        "zero_shot: Z {n} {label}\nselection_item: '{index}) {text}'\nselection: 'P {samples}'\n"
    )
    custom = load_prompts("toy", str(tmp_path))
    conv = build_augment_prompt(TOY, 1, DEMOS[:2], 5, custom)
    assert conv[0] == {"role": "system", "content": "S toy snack reviews"}
    assert conv[1]["content"].startswith("A 5 neg\n* Crunchy pretzels")
    assert build_augment_prompt(TOY, 0, [], 2, custom)[1]["content"] == "Z 2 pos"
    (tmp_path / "toy.yaml").write_text("zero_shot: 'Z {nonsense}'\n")
    load_prompts.cache_clear()
    with pytest.raises(ValueError, match="zero_shot"):
        load_prompts("toy", str(tmp_path))
    load_prompts.cache_clear()


def test_default_prompt_mentions_domain_label_and_demos() -> None:
    conv = build_augment_prompt(TOY, 0, DEMOS[:2], 3, load_prompts("toy"))
    text = conv[-1]["content"]
    assert "toy snack reviews" in text and "a happy review" in text and "3" in text
    assert DEMOS[0][0] in text and DEMOS[1][0] in text


# ----------------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------------


def test_clustering_is_seeded_and_partitions() -> None:
    groups = cluster_demonstrations(DEMOS, FakeEncoder(), 3, np.random.default_rng(0))
    again = cluster_demonstrations(DEMOS, FakeEncoder(), 3, np.random.default_rng(0))
    assert groups == again and len(groups) == 3
    assert sorted(i for g in groups for i in g) == list(range(len(DEMOS)))
    assert cluster_demonstrations(DEMOS[:2], FakeEncoder(), 10, np.random.default_rng(0))


def test_selection_keeps_what_the_llm_chose() -> None:
    llm = ScriptedLLM(["Keep: 1"])
    kept, stats = select_demonstrations(
        DEMOS, TOY, llm, FakeEncoder(), _cfg(), np.random.default_rng(0)
    )
    n_prompts = stats["selection_prompts"]
    assert n_prompts >= 2 and len(kept) == n_prompts and stats["selection_fallbacks"] == 0
    assert all(d in DEMOS for d in kept)
    assert stats["demonstrations_received"] == 8 and stats["demonstrations_kept"] == len(kept)
    assert sum(stats["kept_per_label"].values()) == len(kept)
    prompt = _user(llm.calls[0])
    assert "Example 1 (label: " in prompt and "Keep:" in prompt and "toy snack reviews" in prompt
    assert llm.params[0].temperature == 0.0
    json.dumps(stats)


def test_selection_fallback_keeps_group_and_counts() -> None:
    answers = iter(["I cannot decide, they are all lovely!!"] + ["Keep: 1"] * 10)
    llm = ScriptedLLM(lambda conv: next(answers))
    kept, stats = select_demonstrations(
        DEMOS, TOY, llm, FakeEncoder(), _cfg(samples_per_cluster=3), np.random.default_rng(1)
    )
    assert stats["selection_fallbacks"] == 1 and stats["selection_prompts"] >= 3
    assert 0 < len(kept) < len(DEMOS)


def test_selection_disabled_or_none_keeps_all() -> None:
    llm = ScriptedLLM(["Keep: none"])
    kept, stats = select_demonstrations(
        DEMOS, TOY, llm, FakeEncoder(), _cfg(selection_enabled=False), np.random.default_rng(0)
    )
    assert kept == DEMOS and stats["selection_prompts"] == 0 and not llm.calls
    kept, stats = select_demonstrations(
        DEMOS, TOY, llm, FakeEncoder(), _cfg(), np.random.default_rng(0)
    )
    assert kept == [] and stats["selection_fallbacks"] == 0  # "none" is a usable verdict


# ----------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------


def test_budgets_met_balanced_and_stats_json_safe() -> None:
    gen = Generator(TOY)
    pool = _pool()
    samples, stats = augment(pool, TOY, gen, _cfg(), 1, np.random.default_rng(0), FakeEncoder())
    counts = {lbl: sum(1 for _, x in samples if x == lbl) for lbl in (0, 1)}
    assert counts == {0: 4, 1: 4}
    assert all(t.startswith(TOY.label_names[lbl] + " ") for t, lbl in samples)  # right label
    assert (
        stats["budget_met"] and stats["sent"] == 8 and stats["label_counts"] == {"pos": 4, "neg": 4}
    )
    assert stats["prompts_sent"] == len(gen.prompts) and stats["attempts"] == 1
    assert stats["samples_parsed"] >= 8 and stats["dropped"].get("preamble", 0) >= 1
    assert stats["llm_tokens"] == 10 * len(gen.prompts)
    assert 0 < stats["distinct_1"] <= 1 and 0 < stats["distinct_2"] <= 1
    assert stats["similarity_method"] == "cosine" and -1 <= stats["similarity_to_demos"] <= 1
    assert len(stats["examples"]["pos"]) == 3 and stats["client"] == "c0" and stats["round"] == 1
    assert stats["demonstrations_received"] == 8
    json.dumps(stats)
    # Prompts show demonstrations of the target label only (other_label_demos=0).
    pos_prompt = next(p for p in gen.prompts if "a happy review" in p)
    assert any(t in pos_prompt for t, lbl in DEMOS if lbl == 0)
    assert not any(t in pos_prompt for t, lbl in DEMOS if lbl == 1)


def test_prompts_vary_demonstration_combinations() -> None:
    gen = Generator(TOY, per_answer=1)
    augment(_pool(), TOY, gen, _cfg(samples_per_label=6), 1, np.random.default_rng(0))
    pos = [p for p in gen.prompts if "a happy review" in p]
    assert len(pos) >= 4 and len(set(pos)) >= 3


def test_unbalanced_budget_override() -> None:
    cfg = _cfg(label_budget={"neg": 1})
    _, stats = augment(_pool(), TOY, Generator(TOY), cfg, 1, np.random.default_rng(0))
    assert stats["label_counts"] == {"pos": 4, "neg": 1}


def test_invalid_and_off_target_labels_dropped() -> None:
    def answer(conv: Conversation) -> str:
        target = _target(conv, TOY)
        other = "neg" if target == "pos" else "pos"
        answer.n += 1  # type: ignore[attr-defined]
        k = answer.n  # type: ignore[attr-defined]
        return (
            f"[{target}] {unique_text(k, 'on-target ')}\n"
            f"[awful] {unique_text(k + 1000, 'outside ')}\n"
            f"[{other}] {unique_text(k + 2000, 'other label ')}\n"
            f"[{target}] short\n"
        )

    answer.n = 0  # type: ignore[attr-defined]
    samples, stats = augment(_pool(), TOY, ScriptedLLM(answer), _cfg(), 1, np.random.default_rng(0))
    assert len(samples) == 8 and all("on-target" in t for t, _ in samples)
    d = stats["dropped"]
    assert d["unknown_label"] >= 1 and d["off_target"] >= 1 and d["too_short"] >= 1
    # keep_off_target lets the other label's samples count toward their own budget.
    answer.n = 0  # type: ignore[attr-defined]
    samples, stats = augment(
        _pool(), TOY, ScriptedLLM(answer), _cfg(keep_off_target=True), 1, np.random.default_rng(0)
    )
    assert stats["label_counts"] == {"pos": 4, "neg": 4}
    assert any("other label" in t for t, _ in samples)


def test_near_copies_and_duplicates_dropped() -> None:
    copy = DEMOS[0][0]
    variant = copy.replace("my kids", "our kids").upper()
    counter = iter(range(10_000))

    def answer(conv: Conversation) -> str:
        k = next(counter)
        return f"- {copy}\n- {variant}\n- {unique_text(k)}\n- {copy}"

    samples, stats = augment(_pool(), TOY, ScriptedLLM(answer), _cfg(), 1, np.random.default_rng(0))
    texts = [t for t, _ in samples]
    assert copy not in texts and variant not in texts and len(texts) == 8
    assert stats["dropped"]["near_copy"] >= 3
    assert copy_score(shingles(variant), shingles(copy)) >= 0.5
    assert copy_score(shingles(texts[0]), shingles(copy)) < 0.5


def test_meta_descriptions_dropped_and_yield_histogram() -> None:
    counter = iter(range(10_000))

    def answer(conv: Conversation) -> str:
        k = next(counter)
        return f"- A review of a dessert that had terrible texture {k}.\n- {unique_text(k)}"

    samples, stats = augment(_pool(), TOY, ScriptedLLM(answer), _cfg(), 1, np.random.default_rng(0))
    assert len(samples) == 8 and not any("review of" in t for t, _ in samples)
    assert stats["dropped"]["meta"] >= 4
    assert stats["parsed_per_prompt"] == {"2": stats["prompts_sent"]}


def test_fresh_samples_across_rounds() -> None:
    fixed = [f"- {unique_text(i)}" for i in range(12)]

    def answer(conv: Conversation) -> str:
        return "\n".join(fixed)

    pool = _pool()
    cfg = _cfg(samples_per_label=3, keep_off_target=True)
    r1, _ = augment(pool, TOY, ScriptedLLM(answer), cfg, 1, np.random.default_rng(0))
    r2, s2 = augment(pool, TOY, ScriptedLLM(answer), cfg, 2, np.random.default_rng(1))
    assert len(r1) == 6 and len(r2) == 6
    assert not {t for t, _ in r1} & {t for t, _ in r2}
    assert s2["dropped"]["duplicate"] >= 6
    r3, s3 = augment(pool, TOY, ScriptedLLM(answer), cfg, 3, np.random.default_rng(2))
    assert r3 == [] and not s3["budget_met"]  # all 12 texts were used up
    assert pool.rounds == [1, 2, 3] and pool.summary()["sent"] == 12


def test_attempts_are_bounded_on_garbage() -> None:
    llm = ScriptedLLM(["Sure! Here you go:", "", "```json\n{}\n```"])
    samples, stats = augment(_pool(), TOY, llm, _cfg(max_attempts=2), 1, np.random.default_rng(0))
    assert samples == [] and stats["attempts"] == 2 and not stats["budget_met"]
    assert stats["prompts_sent"] == len(llm.calls) > 0
    assert stats["tokens_per_s"] is None or stats["tokens_per_s"] >= 0


def test_truncated_last_line_dropped() -> None:
    class Truncating(Generator):
        def generate(self, convs: list[Conversation], params: SamplingParams) -> list[Generation]:
            cut = "\n- An unfinished sample that was cut"
            return [Generation(self(c) + cut, params.max_new_tokens) for c in convs]

    samples, stats = augment(_pool(), TOY, Truncating(TOY), _cfg(), 1, np.random.default_rng(0))
    assert stats["dropped"]["truncated"] >= 1
    assert not any("unfinished" in t for t, _ in samples)


def test_labels_without_demos_use_zero_shot_prompt() -> None:
    gen = Generator(TOY)
    pool = _pool(demos=[d for d in DEMOS if d[1] == 0])
    _, stats = augment(pool, TOY, gen, _cfg(), 1, np.random.default_rng(0))
    assert stats["zero_shot_labels"] == ["neg"] and stats["label_counts"]["neg"] == 4


def test_zero_shot_augment_has_no_demonstrations() -> None:
    gen = Generator(TOY)
    seen: set[str] = set()
    samples, stats = zero_shot_augment(TOY, gen, _cfg(), np.random.default_rng(0), seen=seen)
    assert stats["mode"] == "zero_shot" and stats["budget_met"] and len(samples) == 8
    assert not any(t in p for p in gen.prompts for t, _ in DEMOS)
    assert len(seen) == 8


def test_augment_is_deterministic_under_seed() -> None:
    llm_answers = [f"- {unique_text(i)}" for i in range(100)]
    a, _ = augment(_pool(), TOY, ScriptedLLM(llm_answers), _cfg(keep_off_target=True), 1,
                   np.random.default_rng(7))  # fmt: skip
    b, _ = augment(_pool(), TOY, ScriptedLLM(llm_answers), _cfg(keep_off_target=True), 1,
                   np.random.default_rng(7))  # fmt: skip
    assert a == b


def test_diversity_metric() -> None:
    assert distinct_n(["a b c", "a b d"], 1) == pytest.approx(4 / 6)
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    assert distinct_n([], 2) == 0.0


# ----------------------------------------------------------------------------------------------
# Pools, multi-task service, checkpoints
# ----------------------------------------------------------------------------------------------


def test_pool_rejects_invalid_and_duplicate_demos() -> None:
    pool = ClientPool("c", TOY)
    stats = pool.add_demonstrations([("ok text", 0), ("ok text", 0), ("bad", 5), ("", 1), ("x",)])
    assert stats == {"received": 5, "added": 1, "invalid": 3, "duplicate": 1}
    assert pool.demonstrations == [("ok text", 0)]


def test_multi_task_clients_get_only_their_labels() -> None:
    every_label = TOY.label_names + NEWS.label_names

    def answer(conv: Conversation) -> str:
        answer.k += 1  # type: ignore[attr-defined]
        k = answer.k  # type: ignore[attr-defined]
        if "Keep:" in _user(conv):
            return "Keep: all"
        return "\n".join(
            f"Label: {n} | Text: {unique_text(k * 10 + i, n + ' ')}"
            for i, n in enumerate(every_label)
        )

    answer.k = 0  # type: ignore[attr-defined]
    llm = ScriptedLLM(answer)
    svc = AugmentationService(llm, _cfg(samples_per_label=2, keep_off_target=True), FakeEncoder())
    svc.receive("a", TOY, DEMOS)
    news_demos = [("Local team wins the cup final.", 0), ("Parliament passes budget.", 1),
                  ("New phone chip is faster.", 2)]  # fmt: skip
    svc.receive("b", NEWS.to_dict(), news_demos)
    sa, st_a = svc.serve("a", 1)
    sb, st_b = svc.serve("b", 1)
    assert {lbl for _, lbl in sa} == {0, 1} and all(
        any(n in t for n in TOY.label_names) for t, _ in sa
    )
    assert {lbl for _, lbl in sb} == {0, 1, 2}
    assert all(t.split()[0] == NEWS.label_names[lbl] for t, lbl in sb)
    assert all(t.split()[0] == TOY.label_names[lbl] for t, lbl in sa)
    assert st_a["label_counts"] == {"pos": 2, "neg": 2}
    assert st_b["label_counts"] == {"sports": 2, "politics": 2, "tech": 2}
    assert st_a["dropped"]["unknown_label"] >= 3  # the news labels in client a's answers
    assert "selection" in st_a and st_a["task"] == "toy" and st_b["task"] == "toy-news"
    news_prompts = [_user(c) for c in llm.calls if "toy news" in _user(c)]
    assert news_prompts and not any("toy snack" in p for p in news_prompts)


def test_service_state_dict_round_trip_keeps_rounds_fresh() -> None:
    fixed = [f"- {unique_text(i)}" for i in range(8)]
    cfg = _cfg(samples_per_label=2, keep_off_target=True, selection_enabled=False)
    svc = AugmentationService(ScriptedLLM(["\n".join(fixed)]), cfg, seed=3)
    svc.receive("a", TOY, DEMOS)
    r1, _ = svc.serve("a", 1)
    state = json.loads(json.dumps(svc.state_dict()))  # JSON-safe
    svc2 = AugmentationService(ScriptedLLM(["\n".join(fixed)]), cfg)
    svc2.load_state_dict(state)
    assert svc2.seed == 3 and svc2.pools["a"].state_dict() == svc.pools["a"].state_dict()
    r2, _ = svc2.serve("a", 2)
    assert len(r2) == 4 and not {t for t, _ in r1} & {t for t, _ in r2}
    with pytest.raises(KeyError):
        svc2.serve("nobody", 1)


def test_service_zero_shot_and_order_independence() -> None:
    def run(order: list[str]) -> dict[str, list[tuple[str, int]]]:
        gen_a, gen_b = Generator(TOY), Generator(TOY)
        out = {}
        for cid in order:
            svc = AugmentationService(gen_a if cid == "a" else gen_b, _cfg(), FakeEncoder(), seed=1)
            svc.receive(cid, TOY, DEMOS)
            out[cid] = svc.serve(cid, 1, zero_shot=True)[0]
        return out

    assert run(["a", "b"]) == run(["b", "a"])


def test_task_info_from_records() -> None:
    rec = {"name": "n", "domain": "d", "label_names": ["x", "y"], "label_descriptions": ["", "why"]}
    info = TaskInfo.from_any(rec)
    assert info.label_descriptions == {"y": "why"} and info.description(0) == "x"
    assert TaskInfo.from_any(info.to_dict()) == info
    with pytest.raises(ValueError):
        TaskInfo("t", "d", [])
    assert re.search(
        "happy", build_augment_prompt(TOY, 0, [], 2, load_prompts("toy"))[1]["content"]
    )


# ------------------------------------------------------------------ several clients together


class ContentLLM:
    """A fake LLM whose answer depends on the prompt alone (not on call order, batch or seed),
    so serving clients together must give each the samples it gets when served alone."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []  # the domain of every prompt, per generate call
        self.fail_on = fail_on
        self.stats = LLMStats()

    def generate(self, convs: list[Conversation], params: SamplingParams) -> list[Generation]:
        texts = [_user(c) for c in convs]
        self.calls.append(["news" if "toy news" in t else "snack" for t in texts])
        if self.fail_on and any(self.fail_on in t for t in texts):
            raise RuntimeError("endpoint refused the prompt")
        out = []
        for conv, text in zip(convs, texts, strict=True):
            if "Keep:" in text:
                out.append(Generation("Keep: all", 3))
                continue
            task = NEWS if "toy news" in text else TOY
            label = _target(conv, task)
            seed = int(sum(map(ord, text)))
            out.append(Generation("\n".join(
                f"- {unique_text(seed * 7 + i, label + ' ')}" for i in range(3)), 30))
        return out


NEWS_DEMOS = [("Local team wins the cup final.", 0), ("Parliament passes budget.", 1),
              ("New phone chip is faster.", 2), ("Striker signs for a record fee.", 0)]


def _three_clients(llm) -> AugmentationService:
    svc = AugmentationService(llm, _cfg(samples_per_label=4, keep_off_target=True),
                              FakeEncoder(), seed=5)
    svc.receive("a", TOY, DEMOS)
    svc.receive("b", NEWS, NEWS_DEMOS)
    svc.receive("c", TOY, DEMOS[1:7])
    return svc


def test_serve_all_shares_llm_calls_and_gives_each_client_what_serve_gives() -> None:
    alone_llm = ContentLLM()
    alone_svc = _three_clients(alone_llm)
    alone = {cid: alone_svc.serve(cid, 1) for cid in ("a", "b", "c")}
    together_llm = ContentLLM()
    together = _three_clients(together_llm).serve_all(["c", "a", "b"], 1)
    assert set(together) == {"a", "b", "c"}
    for cid in ("a", "b", "c"):
        samples, stats = together[cid]
        assert samples == alone[cid][0]
        assert stats["label_counts"] == alone[cid][1]["label_counts"]
        assert stats["prompts_sent"] == alone[cid][1]["prompts_sent"]
        assert stats["selection"]["selection_prompts"] > 0
    # Selection and every attempt of the three clients went out together.
    assert len(together_llm.calls) < len(alone_llm.calls)
    assert any({"news", "snack"} <= set(call) for call in together_llm.calls)
    assert sum(map(len, together_llm.calls)) == sum(map(len, alone_llm.calls))


def test_serve_all_survives_one_client_whose_prompts_fail() -> None:
    alone = _three_clients(ContentLLM()).serve("a", 1)
    out = _three_clients(ContentLLM(fail_on="toy news")).serve_all(["a", "b", "c"], 1)
    assert isinstance(out["b"], RuntimeError) and "refused" in str(out["b"])
    assert out["a"][0] == alone[0]
    assert len(out["c"][0]) == 8


def test_serve_all_unknown_client_fails_alone() -> None:
    out = _three_clients(ContentLLM()).serve_all(["a", "nobody"], 1)
    assert isinstance(out["nobody"], KeyError)
    assert len(out["a"][0]) == 8


def test_serve_all_writes_the_zero_shot_baseline_together_as_serve_does() -> None:
    alone = {cid: _three_clients(ContentLLM()).serve(cid, 1, zero_shot=True) for cid in "abc"}
    llm = ContentLLM()
    together = _three_clients(llm).serve_all("abc", 1, zero_shot=True)
    for cid in "abc":
        assert together[cid][0] == alone[cid][0] and together[cid][1]["mode"] == "zero_shot"
    assert any({"news", "snack"} <= set(call) for call in llm.calls)
