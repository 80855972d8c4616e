"""Forward+backward time and peak memory of one adapted Linear, side by side in one run.

Variants on SD1.5-sized Linear shapes (4096 tokens = a 64x64 latent), at equal trainable budget:
  full     plain nn.Linear, every weight trained (full fine-tuning)
  lorad    our LoRaD layer, rank 256 (rotated weight computed once, recomputed in backward)
  hook     the authors' formulation: the base Linear runs, then a forward hook recomputes the
           output from a rotated weight built with plain autograd ops (our re-implementation)
  lora     PEFT LoRA with the rank that gives LoRaD's parameter count
  dora     PEFT DoRA, same rank as lora

Each step is the layer's forward and a backward from a fixed upstream gradient (no loss op).
Time: median of --reps steps after a warm-up, the variants interleaved. Peak memory: tensor bytes allocated during one
step above what existed before (CPU: from the profiler's allocation events; CUDA:
torch.cuda.max_memory_allocated). Prints ratios and checks the goals of issue 2.

    python benchmarks/lorad_layer.py            # fp32 on CPU, or bf16 when CUDA is available
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from wadi_core import lorad  # noqa: E402

SHAPES = [(320, 320), (640, 640), (1280, 1280), (320, 2560), (1280, 320)]  # (in, out)
TOKENS = 4096
RANK = 256
VARIANTS = ("full", "lorad", "hook", "lora", "dora")


class HookRotatedLinear(nn.Linear):
    """The authors' formulation, re-implemented: base forward, then a hook that recomputes."""

    def __init__(self, in_f, out_f, rank):
        super().__init__(in_f, out_f)
        self.theta_a = nn.Parameter(torch.zeros(out_f, rank))
        self.theta_b = nn.Parameter(torch.empty(rank, in_f // 2))
        nn.init.xavier_uniform_(self.theta_b)
        self.register_forward_hook(self._rotate_hook)

    @staticmethod
    def _rotate_hook(module, inputs, _output):
        w = module.weight
        theta = (module.theta_a @ module.theta_b).to(torch.float32)
        cos, sin = torch.cos(theta), torch.sin(theta)
        even, odd = w[:, 0::2], w[:, 1::2]
        rotated = torch.empty_like(w)
        rotated[:, 0::2] = even * cos - odd * sin
        rotated[:, 1::2] = even * sin + odd * cos
        return F.linear(inputs[0], rotated.to(inputs[0].dtype)) + module.bias


def lora_rank_for_budget(in_f, out_f):
    return max(1, round(RANK * (out_f + in_f // 2) / (out_f + in_f)))


def build(variant, in_f, out_f, dtype, device):
    torch.manual_seed(0)
    if variant == "hook":
        layer = HookRotatedLinear(in_f, out_f, RANK)
        for name, p in layer.named_parameters():
            p.requires_grad_(name.startswith("theta"))
        model = nn.Sequential(layer)
    else:
        model = nn.Sequential(nn.Linear(in_f, out_f))
    if variant == "lorad":
        lorad.attach(model, rank=RANK, targets=["0"])
    elif variant in ("lora", "dora"):
        import peft
        r = lora_rank_for_budget(in_f, out_f)
        config = peft.LoraConfig(r=r, lora_alpha=r, target_modules=["0"], use_dora=variant == "dora")
        model = peft.get_peft_model(model, config)
    model = model.to(device=device, dtype=dtype).train()
    if variant == "lorad":  # adapters stay float32 (the angles are fp32 by design)
        for p in lorad.trainable_parameters(model):
            p.data = p.data.float()
    with torch.no_grad():  # a non-identity state, as mid-training
        for name, p in model.named_parameters():
            if p.requires_grad and p.dim() == 2 and variant != "full":
                p.normal_(0, 0.02)
    return model


def step(model, x, grad_out):
    """One forward and backward of the layer alone (a fixed upstream gradient, no loss op)."""
    model(x).backward(grad_out)


def inputs(in_f, out_f, dtype, device):
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(1, TOKENS, in_f, device=device, dtype=dtype, generator=g).requires_grad_(True)
    return x, torch.randn(1, TOKENS, out_f, device=device, dtype=dtype, generator=g)


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def time_variants(in_f, out_f, dtype, device, reps):
    """Median step time of every variant, timed round-robin so that drift hits all alike."""
    models = {v: build(v, in_f, out_f, dtype, device) for v in VARIANTS}
    x, grad_out = inputs(in_f, out_f, dtype, device)
    times = {v: [] for v in VARIANTS}
    for rep in range(reps + 1):
        for variant, model in models.items():
            model.zero_grad(set_to_none=True)
            x.grad = None
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(model, x, grad_out)
            if device == "cuda":
                torch.cuda.synchronize()
            if rep:  # the first round is the warm-up
                times[variant].append(time.perf_counter() - t0)
    return {v: (statistics.median(t), trainable(models[v])) for v, t in times.items()}


def peak_memory_mb(variant, in_f, out_f, dtype, device):
    """Peak of tensor memory allocated during one forward+backward, above what existed before."""
    model = build(variant, in_f, out_f, dtype, device)
    x, grad_out = inputs(in_f, out_f, dtype, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(model, x, grad_out)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    # CPU: replay the profiler's allocation and free events in time order (exact tensor bytes,
    # independent of how the C allocator caches pages).
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(model, x, grad_out)
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    machine = torch.cuda.get_device_name() if device == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device {device} ({machine}), dtype {str(dtype)[6:]}, tokens {TOKENS}, LoRaD rank {RANK}, torch {torch.__version__}")
    rows = []
    for in_f, out_f in SHAPES:
        timed = time_variants(in_f, out_f, dtype, device, args.reps)
        for variant in VARIANTS:
            seconds, params = timed[variant]
            peak = peak_memory_mb(variant, in_f, out_f, dtype, device)
            rows.append({"in": in_f, "out": out_f, "variant": variant, "params": params,
                         "ms": seconds * 1e3, "peak_mb": peak})
            print(f"  {in_f:5d}->{out_f:<5d} {variant:6s} params {params:10,d}  {seconds * 1e3:8.1f} ms  "
                  f"peak {peak:7.1f} MiB", flush=True)

    def ratio(a, b, key):
        per = [next(r for r in rows if r["in"] == i and r["out"] == o and r["variant"] == a)[key] /
               next(r for r in rows if r["in"] == i and r["out"] == o and r["variant"] == b)[key] for i, o in SHAPES]
        return math.exp(sum(map(math.log, per)) / len(per)), max(per)

    print("\nratios (geometric mean over shapes; worst shape):")
    goals = [("lorad / full time", ratio("lorad", "full", "ms"), "<=", 1.15),
             ("hook / lorad time", ratio("hook", "lorad", "ms"), ">=", 1.5),
             ("lorad / dora time", ratio("lorad", "dora", "ms"), "<=", 1.0),
             ("lorad / full peak memory", ratio("lorad", "full", "peak_mb"), "<=", 1.0),
             ("lorad / lora time", ratio("lorad", "lora", "ms"), None, None),
             ("hook / lorad peak memory", ratio("hook", "lorad", "peak_mb"), None, None)]
    for name, (mean, worst), op, limit in goals:
        verdict = "" if op is None else ("  goal %s %.2f: %s" % (op, limit, "met" if (
            mean <= limit if op == "<=" else mean >= limit) else "NOT met"))
        print(f"  {name:26s} {mean:5.2f}x (worst shape {worst:5.2f}x){verdict}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "machine": machine, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
