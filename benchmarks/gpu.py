"""GPU benchmark: server generation against the memory-bandwidth bound, and the DP step, in bf16.

Sized to finish in under 10 minutes on one GPU (no new batch size starts after ``--budget-s``)::

    python benchmarks/gpu.py                          # transformers backend, bf16, batch sweep
    python benchmarks/gpu.py --llm /path/or/hub-name  # any causal LM the loader resolves
    python benchmarks/gpu.py --vllm                   # also the vLLM engine on the same prompts
    python benchmarks/gpu.py --device cpu --batches 1,4 --new-tokens 8 --no-dp  # a dry run

Decoding one token for a batch reads every weight once, so a step cannot take less than
``weight_bytes / bandwidth``: the batch's throughput is bounded by
``batch * bandwidth / weight_bytes`` tokens/s. The bandwidth is *measured* here (a large
device-to-device copy), not taken from a data sheet, and the KV cache is left out of the bytes,
which makes the bound optimistic: the fraction reached is an upper estimate of how far the
backend is from the hardware. Small models at small batches are launch- and Python-bound, far
from this bound; the batch sweep shows where that changes.

Writes ``benchmarks/results/gpu.json`` (``--out`` to change) and prints the tables.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS, augment_prompts, save, table


def decode_bound_tokens_per_s(batch: int, bandwidth_bytes_per_s: float,
                              weight_bytes: int) -> float:
    """Upper bound on decode throughput: each step reads all weights once for the whole batch."""
    if batch < 1 or bandwidth_bytes_per_s <= 0 or weight_bytes <= 0:
        raise ValueError("batch, bandwidth and weight bytes must be positive")
    return batch * bandwidth_bytes_per_s / weight_bytes


def measure_bandwidth(device: str, nbytes: int, repeats: int = 10) -> float:
    """Bytes/s of a device-to-device copy (read + write counted), median over ``repeats``."""
    import torch

    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / statistics.median(times)


def weight_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def bench_transformers(args: argparse.Namespace, bandwidth: float) -> dict[str, Any]:
    import torch

    from fdkt_flwr.llm import SamplingParams, TransformersLLM
    from fdkt_flwr.models import load_causal_lm

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model, tok = load_causal_lm(args.llm, dtype=dtype)
    model = model.to(args.device)
    llm = TransformersLLM(model, tok)
    wbytes = weight_bytes(model)
    # Every sequence decodes exactly new_tokens, so all batch sizes do comparable work.
    llm.model.generation_config.min_new_tokens = args.new_tokens
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.8, top_p=0.9, seed=0)
    llm.batch_size = 2
    llm.generate(augment_prompts(2), params)  # warm-up: kernels, allocator
    rows = []
    deadline = time.monotonic() + args.budget_s
    for bs in args.batches:
        if time.monotonic() > deadline:
            rows.append({"backend": "transformers", "batch": bs, "skipped": "time budget"})
            continue
        llm.batch_size = bs
        convs = augment_prompts(bs * args.batches_per_size)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        gens = llm.generate(convs, params)
        sec = time.perf_counter() - t0
        tps = sum(g.num_tokens for g in gens) / sec
        bound = decode_bound_tokens_per_s(bs, bandwidth, wbytes)
        rows.append({"backend": "transformers", "batch": bs, "prompts": len(convs),
                     "tokens_per_s": tps, "bound_tokens_per_s": bound,
                     "fraction_of_bound": tps / bound,
                     "peak_gpu_mb": (torch.cuda.max_memory_allocated() / 2**20
                                     if args.device.startswith("cuda") else None)})
        print(f"  batch {bs}: {tps:.0f} tok/s ({100 * tps / bound:.1f}% of the bound)",
              flush=True)
    return {"weight_bytes": wbytes, "dtype": str(dtype), "rows": rows}


def bench_vllm(args: argparse.Namespace, bandwidth: float, wbytes: int) -> dict[str, Any]:
    from fdkt_flwr.llm import VLLMLLM, SamplingParams
    from fdkt_flwr.models import resolve_model

    try:
        engine = VLLMLLM(resolve_model(args.llm), dtype="bfloat16",
                         gpu_memory_utilization=0.5)
    except Exception as exc:  # LLMError (no vllm), or any of vLLM's start-up errors
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    n = max(args.batches) * args.batches_per_size
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.8, top_p=0.9, seed=0)
    engine.generate(augment_prompts(4), params)
    t0 = time.perf_counter()
    gens = engine.generate(augment_prompts(n), params)
    sec = time.perf_counter() - t0
    tps = sum(g.num_tokens for g in gens) / sec
    # vLLM schedules all n prompts at once (continuous batching): bound at batch n.
    bound = decode_bound_tokens_per_s(n, bandwidth, wbytes)
    return {"backend": "vllm", "batch": n, "prompts": n, "tokens_per_s": tps,
            "bound_tokens_per_s": bound, "fraction_of_bound": tps / bound}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--llm", default="smollm2-135m-instruct")
    ap.add_argument("--generator", default="smollm2-135m-instruct")
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1, 8, 32, 128])
    ap.add_argument("--batches-per-size", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="stop starting new batch sizes after this many seconds")
    ap.add_argument("--vllm", action="store_true")
    ap.add_argument("--no-dp", dest="dp", action="store_false",
                    help="skip the DP-step comparison (bench.py dp-step on this device)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu.py: no CUDA device; use --device cpu for a dry run", file=sys.stderr)
        return 2
    bandwidth = measure_bandwidth(args.device, 2**30 if args.device.startswith("cuda")
                                  else 2**27)
    print(f"measured copy bandwidth on {args.device}: {bandwidth / 1e9:.0f} GB/s", flush=True)
    gen = bench_transformers(args, bandwidth)
    rows = list(gen["rows"])
    if args.vllm:
        rows.append(bench_vllm(args, bandwidth, gen["weight_bytes"]))
    print(table(rows, ["backend", "batch", "prompts", "tokens_per_s", "bound_tokens_per_s",
                       "fraction_of_bound", "peak_gpu_mb", "skipped", "error"]))
    payload: dict[str, Any] = {"device": args.device, "llm": args.llm,
                               "bandwidth_bytes_per_s": bandwidth, "generation": gen,
                               "rows": rows}
    if args.dp:
        from bench import bench_dp_step

        dp_args = argparse.Namespace(generator=args.generator, batch=16, steps=4,
                                     max_length=64)
        payload["dp_step"] = bench_dp_step(dp_args)
    path = save("gpu", payload, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
