"""Benchmarks for every FDKT stage. Each prints a table and writes JSON; ratios are measured side
by side in one invocation, on the same inputs.

    python benchmarks/bench.py generation      # (a) server LLM: batched vs one prompt at a time
    python benchmarks/bench.py dp-step         # (b) DP vs non-DP step: full FT, LoRA, ghost
    python benchmarks/bench.py dp-batch        # default DP step at physical batch 4/8/16
    python benchmarks/bench.py augment         # a server round: clients one at a time vs together
    python benchmarks/bench.py default-job     # (c) the default job: wall time, peak memory, phases
    python benchmarks/bench.py scale           # (d) 2/4/8/16 clients at small settings
    python benchmarks/bench.py leak-guard      # cost of the leak guard on a reply
    python benchmarks/bench.py all

Results go to ``benchmarks/results/<name>.json`` (``--out`` to change). Timings on a shared
machine are noisy: every number here is a median over repeats after a warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_avg_at_start": os.getloadavg()[0]}


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "–" if v is None else str(v)

    out = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def save(name: str, payload: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(),
                                "time": time.strftime("%Y-%m-%d %H:%M:%S"), **payload},
                               indent=2, default=str) + "\n")
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- (a) generation

def augment_prompts(n: int) -> list[Any]:
    """``n`` few-shot augmentation prompts as the server builds them (labels alternate)."""
    from fdkt_flwr.augmentation import TaskInfo, build_augment_prompt, load_prompts

    task = TaskInfo("fine-food", "fine food product reviews", ["other", "great"])
    templates = load_prompts("fine-food")
    demos = [("These oats are hearty and taste great with honey.", 1),
             ("The coffee arrived stale and bitter; I will not reorder.", 0)]
    return [build_augment_prompt(task, i % 2, demos, 3, templates, 300) for i in range(n)]


def bench_generation(args: argparse.Namespace) -> dict[str, Any]:
    """Same prompts, same number of new tokens (EOS suppressed), batched vs one at a time."""
    from fdkt_flwr.llm import SamplingParams, TransformersLLM

    llm = TransformersLLM.from_name(args.llm, batch_size=args.batch)
    convs = augment_prompts(args.prompts)
    n_new = args.new_tokens
    # Force every sequence to exactly n_new tokens so both modes do identical work.
    llm.model.generation_config.min_new_tokens = n_new
    params = SamplingParams(max_new_tokens=n_new, temperature=0.8, top_p=0.9, seed=0)
    llm.generate(convs[:2], params)  # warm-up (oneDNN primitives)
    rows = []
    for mode, bs in (("batched", args.batch), ("one at a time", 1)):
        llm.batch_size = bs
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            gens = llm.generate(convs, params)
            times.append(time.perf_counter() - t0)
        tokens = sum(g.num_tokens for g in gens)
        sec = statistics.median(times)
        rows.append({"mode": mode, "batch_size": bs, "prompts": len(convs), "new_tokens": tokens,
                     "seconds": sec, "tokens_per_s": tokens / sec})
    ratio = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
    print(table(rows, ["mode", "batch_size", "prompts", "new_tokens", "seconds",
                       "tokens_per_s"]))
    print(f"batched / one-at-a-time throughput: {ratio:.2f}x")
    return {"rows": rows, "ratio_batched_over_single": ratio, "llm": args.llm}


# --------------------------------------------------------------------------- (b) DP step

def _dp_step_child(spec_json: str) -> None:
    """Run in a subprocess: time the steps of one training configuration; print JSON."""
    import psutil
    import torch  # noqa: F401 - import cost outside the timing

    from fdkt_flwr.data import load_source
    from fdkt_flwr.generator import GeneratorTrainConfig, train_dp_generator
    from fdkt_flwr.models import load_causal_lm
    from fdkt_flwr.privacy import PrivacyLedger, PrivacySpec

    s = json.loads(spec_json)
    model, tok = load_causal_lm(s["model"], fresh=True)
    after_load = peak_rss_mb()
    src = load_source("fine-food")
    n = s["batch"] * s["steps"]  # q = batch/n and steps = epochs/q -> `steps` steps for 1 epoch
    texts, codes = src.train.texts[:n], ["Domain: fine food reviews | Rating: great"] * n
    spec = PrivacySpec(epsilon=s["epsilon"], delta=1e-5, max_grad_norm=1.0)
    stamps: list[float] = []
    cfg = GeneratorTrainConfig(lora_rank=s["lora_rank"], epochs=1, batch_size=s["batch"],
                               max_physical_batch_size=s.get("physical") or s["batch"] * 2,
                               max_length=s["max_length"], grad_sample_mode=s["mode"], seed=0,
                               trim_heap=s.get("trim", True))
    t0 = time.perf_counter()
    train_dp_generator(model, tok, texts, codes, spec, PrivacyLedger.for_spec(spec), cfg,
                       progress=lambda msg: stamps.append(time.perf_counter())
                       if " step " in msg else None)
    total = time.perf_counter() - t0
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    print(json.dumps({"step_s": statistics.median(gaps) if gaps else None,
                      "steps_timed": len(gaps), "total_s": total,
                      "peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": after_load,
                      # what the process keeps holding once training is over
                      "rss_after_train_mb": psutil.Process().memory_info().rss / 2**20}))


def _run_dp_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration in a fresh process (its peak RSS is its own); its JSON, or the error."""
    p = subprocess.run([sys.executable, __file__, "_dp_child", json.dumps(spec)],
                       capture_output=True, text=True, timeout=3600, cwd=ROOT)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": ((p.stderr.strip().splitlines() or ["no output"])[-1])[:200]}


def bench_dp_step(args: argparse.Namespace) -> dict[str, Any]:
    configs = []
    for lora in (0, 8):
        for dp in (False, True):
            modes = ["hooks"] + (["ghost"] if dp else [])
            for mode in modes:
                configs.append({"model": args.generator, "lora_rank": lora, "mode": mode,
                                "epsilon": 8.0 if dp else float("inf"), "batch": args.batch,
                                "steps": args.steps, "max_length": args.max_length,
                                "dp": dp})
    rows = []
    for c in configs:
        name = (f"{'LoRA r=8' if c['lora_rank'] else 'full FT'} "
                f"{'DP ' + c['mode'] if c['dp'] else 'non-DP'}")
        print(f"running {name} ...", flush=True)
        rows.append({"config": name, **c, **_run_dp_child(c)})
    by = {r["config"]: r for r in rows}
    ratios = {}
    for base in ("full FT", "LoRA r=8"):
        ref = by.get(f"{base} non-DP", {})
        for mode in ("hooks", "ghost"):
            r = by.get(f"{base} DP {mode}", {})
            if r.get("step_s") and ref.get("step_s"):
                ratios[f"{base} DP {mode} / non-DP step time"] = r["step_s"] / ref["step_s"]
            if r.get("peak_rss_mb") and ref.get("peak_rss_mb"):
                ratios[f"{base} DP {mode} / non-DP peak RSS"] = r["peak_rss_mb"] / ref[
                    "peak_rss_mb"]
    print(table(rows, ["config", "batch", "max_length", "step_s", "peak_rss_mb",
                       "rss_after_load_mb", "error"]))
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    return {"rows": rows, "ratios": ratios}


def bench_dp_batch(args: argparse.Namespace) -> dict[str, Any]:
    """The default DP configuration at several physical batch sizes (memory vs step time).

    The generator splits each Poisson batch into physical chunks and clips per example in each;
    activations and per-example gradients scale with the chunk, the work per logical step does
    not. Every size runs with the heap trimmed after each logical step (the default); the first
    size also runs without, side by side, to show what trimming buys.
    """
    sizes = [int(x) for x in args.physical.split(",")]
    runs = [(p, True) for p in sizes] + [(sizes[0], False)]
    rows = []
    for physical, trim in runs:
        c = {"model": args.generator, "lora_rank": 8, "mode": "hooks", "epsilon": 8.0,
             "batch": 32, "steps": args.steps, "max_length": args.max_length,
             "physical": physical, "trim": trim}
        print(f"running physical batch {physical}, heap trim {'on' if trim else 'off'} ...",
              flush=True)
        rows.append({"physical_batch": physical, "logical_batch": 32, "trim_heap": trim,
                     **_run_dp_child(c)})
    print(table(rows, ["physical_batch", "logical_batch", "trim_heap", "step_s", "peak_rss_mb",
                       "rss_after_train_mb", "error"]))
    on, off = rows[0], rows[-1]
    ratios = {}
    if on.get("step_s") and off.get("step_s"):
        ratios = {"trim / no trim step time": on["step_s"] / off["step_s"],
                  "trim / no trim peak RSS": on["peak_rss_mb"] / off["peak_rss_mb"],
                  "trim / no trim RSS after training":
                      on["rss_after_train_mb"] / off["rss_after_train_mb"]}
        for k, v in ratios.items():
            print(f"physical batch {sizes[0]}, {k}: {v:.2f}x")
    return {"rows": rows, "ratios": ratios}


# --------------------------------------------------------------------------- (c)/(d) jobs

class TreeMemory:
    """Peak resident memory of this process's whole tree (SuperLink, Ray, actors), sampled."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak_mb = 0.0  # summed RSS: shared pages (torch's libraries) count once per process
        self.peak_pss_mb = 0.0  # summed PSS: shared pages split among their users (Linux)
        self.at_peak: dict[str, float] = {}  # MB per kind of process when the peak was seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def kind(p: Any) -> str:
        """A short name: the Ray actor or the Flower/Python entry point a process runs."""
        name = p.name()
        if name.startswith("python"):
            args = p.cmdline()
            script = next((a for a in args[1:] if not a.startswith("-")), name)
            name = Path(script).name
        return name

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            rss: list[tuple[Any, int]] = []
            pss = 0
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    info = p.memory_full_info()  # rss and, on Linux, pss in one read
                    rss.append((p, info.rss))
                    pss += getattr(info, "pss", 0)
            self.peak_pss_mb = max(self.peak_pss_mb, pss / 2**20)
            total = sum(r for _, r in rss) / 2**20
            if total > self.peak_mb:
                self.peak_mb = total
                kinds: dict[str, float] = {}
                for p, r in rss:  # names only at a new peak: cmdline reads are not free
                    with contextlib.suppress(psutil.Error):
                        k = self.kind(p)
                        kinds[k] = kinds.get(k, 0.0) + r / 2**20
                self.at_peak = dict(sorted(kinds.items(), key=lambda kv: -kv[1]))
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _job(overrides: dict[str, Any], clients: int, out: Path) -> dict[str, Any]:
    from fdkt_flwr.launcher import run_app

    t0 = time.perf_counter()
    with TreeMemory() as mem:
        outcome = run_app({**overrides, "output-dir": str(out)}, num_clients=clients,
                          stream=False, timeout=7200)
    wall = time.perf_counter() - t0
    res = json.loads(outcome.results_path.read_text()) if outcome.results_path.exists() else {}
    return {"clients": clients, "status": outcome.status, "wall_s": wall,
            "peak_tree_rss_mb": mem.peak_mb, "peak_tree_pss_mb": mem.peak_pss_mb,
            "rss_mb_at_peak": mem.at_peak,
            "timing": res.get("timing", {}),
            "results": str(outcome.results_path)}


def bench_default_job(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.workdir) / "default-job"
    row = _job({}, args.clients, out)
    phases = [{"phase": k, "seconds": v} for k, v in row["timing"].items()]
    print(table([row], ["clients", "status", "wall_s", "peak_tree_rss_mb", "peak_tree_pss_mb"]))
    print(table(phases, ["phase", "seconds"]))
    print("client phases are summed over clients; two clients run at once on 2 cores")
    print(table([{"process": k, "rss_mb": v} for k, v in row["rss_mb_at_peak"].items()],
                ["process", "rss_mb"]))
    return {"job": row}


SMALL = {"num-server-rounds": 1, "dataset.private-size": 32, "dataset.test-size": 32,
         "generator.epochs": 1, "generator.batch-size": 16, "generator.max-length": 48,
         "generator.demos-per-label": 4, "generator.max-new-tokens": 32,
         "llm.samples-per-label": 4, "llm.max-new-tokens": 96, "selection.clusters": 2,
         "slm.epochs": 1, "slm.max-length": 64}


def bench_scale(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for n in [int(x) for x in args.clients_list.split(",")]:
        print(f"scale: {n} clients ...", flush=True)
        row = _job(SMALL, n, Path(args.workdir) / f"scale-{n}")
        row["wall_s_per_client"] = row["wall_s"] / n
        row["server_augmentation_s"] = row["timing"].get("server_augmentation")
        rows.append(row)
    print(table(rows, ["clients", "status", "wall_s", "wall_s_per_client",
                       "server_augmentation_s", "peak_tree_rss_mb", "peak_tree_pss_mb"]))
    return {"rows": rows, "settings": SMALL}


# --------------------------------------------------------------------------- server augmentation

class _CountingLLM:
    """Passes calls through to an LLM and records the prompts of every generate call."""

    def __init__(self, llm: Any) -> None:
        self.llm, self.calls = llm, []

    @property
    def stats(self) -> Any:
        return self.llm.stats

    def generate(self, convs: list[Any], params: Any) -> list[Any]:
        self.calls.append(len(convs))
        return self.llm.generate(convs, params)


def bench_augment(args: argparse.Namespace) -> dict[str, Any]:
    """One server round for ``--clients`` clients: served one at a time vs together.

    Same LLM, settings (the run config's defaults), demonstrations and seeds; only how the
    clients' requests reach the LLM differs (``AugmentationService.serve`` per client vs
    ``serve_all``). Each client's 16 demonstrations per label are real reviews from its own
    slice of the corpus, standing in for DP demonstrations (throughput does not depend on
    where they came from).
    """
    from fdkt_flwr.augmentation import AugmentationService
    from fdkt_flwr.config import FdktConfig
    from fdkt_flwr.data import load_source
    from fdkt_flwr.llm import SamplingParams
    from fdkt_flwr.server import load_server_models
    from fdkt_flwr.strategy import augment_config
    from fdkt_flwr.tasks import load_task

    cfg = FdktConfig()
    cfg.llm.model = args.llm
    src = load_source(cfg.dataset.name)
    task = load_task(src.name, src.label_names).to_record()
    per_label = cfg.generator.demos_per_label
    demos: dict[str, list[tuple[str, int]]] = {}
    pool = list(zip(src.train.texts, src.train.labels, strict=True))
    for c in range(args.clients):
        mine = pool[c * len(pool) // args.clients:(c + 1) * len(pool) // args.clients]
        demos[f"client-{c}"] = [d for y in range(len(src.label_names))
                                for d in [x for x in mine if x[1] == y][:per_label]]
    llm, encoder = load_server_models(cfg)  # as the ServerApp loads them
    llm.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(max_new_tokens=4))  # warm-up
    rows = []
    for mode in ("one client at a time", "all clients together"):
        counting = _CountingLLM(llm)
        svc = AugmentationService(counting, augment_config(cfg), encoder, seed=cfg.seed)
        for cid, d in demos.items():
            svc.receive(cid, task, d)
        print(f"running {mode} ...", flush=True)
        t0 = time.perf_counter()
        if mode == "one client at a time":
            out = {cid: svc.serve(cid, 1) for cid in demos}
        else:
            out = svc.serve_all(demos, 1)
        wall = time.perf_counter() - t0
        stats = [o[1] for o in out.values() if not isinstance(o, Exception)]
        sent = sum(s["sent"] for s in stats)
        rows.append({"mode": mode, "clients": len(demos), "wall_s": wall,
                     "generate_calls": len(counting.calls), "prompts": sum(counting.calls),
                     "llm_tokens": sum(s["llm_tokens"] + s.get("selection", {}).get(
                         "llm_tokens", 0) for s in stats),
                     "samples_sent": sent, "samples_per_min": 60 * sent / wall,
                     "failed": len(out) - len(stats)})
    print(table(rows, ["mode", "clients", "wall_s", "generate_calls", "prompts", "llm_tokens",
                       "samples_sent", "samples_per_min", "failed"]))
    ratio = rows[0]["wall_s"] / rows[1]["wall_s"]
    print(f"one at a time / together wall time: {ratio:.2f}x")
    return {"rows": rows, "ratio_sequential_over_together": ratio, "llm": args.llm}


# --------------------------------------------------------------------------- leak guard

def bench_leak_guard(args: argparse.Namespace) -> dict[str, Any]:
    from flwr.app import ConfigRecord, RecordDict

    from fdkt_flwr.data import load_source
    from fdkt_flwr.leakguard import LeakIndex, scan

    private = load_source("fine-food").train.texts[: args.private]
    t0 = time.perf_counter()
    index = LeakIndex(private, span=12)
    build = time.perf_counter() - t0
    demos = load_source("fine-food").test.texts[:64]  # stand-ins of the same length
    content = RecordDict({"demos": ConfigRecord({"texts": demos})})
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        scan(content, index)
        times.append(time.perf_counter() - t0)
    row = {"private_examples": len(private), "index_build_s": build,
           "scan_64_demos_ms": statistics.median(times) * 1000}
    print(table([row], list(row)))
    return row


# --------------------------------------------------------------------------- main

BENCHES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "generation": bench_generation, "dp-step": bench_dp_step,
    "dp-batch": bench_dp_batch, "default-job": bench_default_job, "scale": bench_scale,
    "leak-guard": bench_leak_guard, "augment": bench_augment,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_dp_child":
        _dp_step_child(argv[1])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", choices=[*BENCHES, "all"])
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--workdir", default=str(Path.home() / "fdkt-flwr-runs" / "bench"))
    ap.add_argument("--llm", default="smollm2-135m-instruct")
    ap.add_argument("--generator", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--clients-list", default="2,4,8,16")
    ap.add_argument("--private", type=int, default=128)
    ap.add_argument("--physical", default="4,8,16", help="dp-batch: physical batch sizes")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    names = list(BENCHES) if args.bench == "all" else [args.bench]
    for name in names:
        print(f"\n## {name}\n", flush=True)
        payload = BENCHES[name](args)
        print(f"wrote {save(name, {'args': vars(args), **payload}, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
