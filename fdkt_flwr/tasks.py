"""Task templates: the words that describe a client's domain and labels.

A task is what a client's data is about: its dataset name, domain words, label names and
optional label descriptions, plus the control-code template of DP fine-tuning. Templates live in
``conf/tasks/<dataset>.yaml`` (falling back to ``conf/tasks/default.yaml``) so that users can
adapt wording without touching code. Only these public words travel to the server, never data.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    domain: str
    label_names: list[str]
    control_code: str = "Domain: {domain} | Label: {label}"
    label_descriptions: dict[str, str] = field(default_factory=dict)

    def control_codes(self) -> dict[int, str]:
        """Label id -> the control code that conditions the generator on that label."""
        return {i: self.control_code.format(domain=self.domain, label=name)
                for i, name in enumerate(self.label_names)}

    def to_record(self) -> dict:
        return {"name": self.name, "domain": self.domain, "label_names": list(self.label_names),
                "label_descriptions": [self.label_descriptions.get(n, "")
                                       for n in self.label_names]}

    @classmethod
    def from_record(cls, rec: dict) -> TaskSpec:
        names = list(rec["label_names"])
        descs = list(rec.get("label_descriptions") or [""] * len(names))
        return cls(name=str(rec["name"]), domain=str(rec["domain"]), label_names=names,
                   label_descriptions={n: d for n, d in zip(names, descs, strict=True) if d})


@functools.lru_cache(maxsize=32)
def _template(task_key: str, conf_dir: str) -> dict:
    base = Path(conf_dir) / "tasks"
    path = base / f"{task_key}.yaml"
    data = yaml.safe_load((base / "default.yaml").read_text()) or {}
    if path.exists():
        data.update(yaml.safe_load(path.read_text()) or {})
    return data


def task_key(dataset_name: str) -> str:
    """The template key: ``/data/clinic.csv`` -> ``clinic``; ``hf:ag_news`` -> ``ag_news``."""
    name = dataset_name[3:] if dataset_name.startswith("hf:") else dataset_name
    return Path(name).stem.replace("/", "_")


def load_task(dataset_name: str, label_names: list[str], domain: str = "",
              conf_dir: Path = CONF_DIR) -> TaskSpec:
    key = task_key(dataset_name)
    t = _template(key, str(conf_dir))
    dom = domain or str(t.get("domain", "{dataset} texts")).format(dataset=key)
    return TaskSpec(name=key, domain=dom, label_names=list(label_names),
                    control_code=str(t.get("control_code")),
                    label_descriptions=dict(t.get("label_descriptions") or {}))
