"""minirl vs the identical model in PyTorch eager, same weights, same thread count, one run.

    python benchmarks/bench_model.py [--threads 1] [--batch 64] [--seq 24] [--steps 10] [--config default]

Two workloads, each timed as the median of --steps repeats after warm-up (minirl and torch
repeats alternate, so both see the same machine load):
  1. a training step: forward + mean next-token NLL + backward + AdamW step
     (minirl.optim.AdamW vs torch.optim.AdamW, same hyperparameters);
  2. KV-cache greedy generation: minirl `model.generate(prompts, 16, greedy=True)`
     for --gen-batch prompts of --prompt-len tokens, vs the torch mirror's KV-cache
     loop (`minirl.export.torch.greedy_generate`), and HF `LlamaForCausalLM.generate`
     (use_cache=True) when transformers is installed.
Then a per-op profile of minirl's training step (and of generation): time in
each functional op's forward and backward, the tape's own overhead, the optimizer.

GFLOP/s count matmul FLOPs only: 2 * (weights in matmuls) * tokens for a forward,
plus attention 4 * B * H * T * S * D; a training step is 3x its forward.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1, help="BLAS threads for NumPy and torch.set_num_threads (default 1, minirl's own default)")
    p.add_argument("--batch", type=int, default=64, help="training batch size (default 64)")
    p.add_argument("--seq", type=int, default=24, help="training sequence length (default 24)")
    p.add_argument("--steps", type=int, default=10, help="timed repeats per measurement; the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed repeats before timing")
    p.add_argument("--config", default="default", choices=sorted(PRESETS), help="model size preset")
    p.add_argument("--gen-batch", type=int, default=256, help="generation: number of prompts (default 256)")
    p.add_argument("--prompt-len", type=int, default=8, help="generation: prompt length (default 8)")
    p.add_argument("--new-tokens", type=int, default=16, help="generation: max_new_tokens (default 16)")
    p.add_argument("--skip", choices=["train", "generate"], action="append", default=[], help="skip a workload")
    p.add_argument("--no-profile", action="store_true", help="skip the per-op profiles")
    p.add_argument("--cprofile", action="store_true", help="also print cProfile's top 15 (tottime) for the training step")
    return p.parse_args()


PRESETS = {
    "default": {},  # TransformerConfig(): vocab 52, hidden 64, 4 layers, 4 heads, intermediate 176
    "gqa": dict(num_key_value_heads=2),
    "wide": dict(hidden_size=128, intermediate_size=352, num_attention_heads=8, num_key_value_heads=8),
    "tiny": dict(hidden_size=32, intermediate_size=88, num_hidden_layers=2),
}
"""Named TransformerConfig overrides."""

# 1) thread counts must be fixed before NumPy (and its BLAS) is imported
ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import statistics  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from minirl import functional as F  # noqa: E402
from minirl import model as minirl_model  # noqa: E402
from minirl.model import Transformer, TransformerConfig  # noqa: E402
from minirl.tensor import Tensor  # noqa: E402


# ------------------------------------------------------------------ timing
def time_ms(*fns, steps: int, warmup: int) -> list[tuple[float, float]]:
    """(median, min) wall time in ms of each fn, the fns run alternately so they see the same machine load."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(steps):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [(1e3 * statistics.median(ts), 1e3 * min(ts)) for ts in times]


# ------------------------------------------------------------------- FLOPs
def matmul_weights(cfg: TransformerConfig) -> int:
    """Number of weights used in matmuls per token: the 7 projections per layer and the output projection."""
    C, I, H, K, D = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    per_layer = C * H * D + 2 * C * K * D + H * D * C + 3 * C * I
    return cfg.num_hidden_layers * per_layer + cfg.vocab_size * C


def forward_flops(cfg: TransformerConfig, B: int, T: int, S: int) -> float:
    """Matmul FLOPs of one forward over T new positions attending to S keys."""
    attention = 4 * B * cfg.num_attention_heads * T * S * cfg.head_dim * cfg.num_hidden_layers
    return 2 * matmul_weights(cfg) * B * T + attention


def generate_flops(cfg: TransformerConfig, B: int, P: int, N: int) -> float:
    """Prefill of P positions, then N - 1 single-token steps with the cache."""
    return forward_flops(cfg, B, P, P) + sum(forward_flops(cfg, B, 1, P + t + 1) for t in range(N - 1))


# --------------------------------------------------------------- profiling
class OpProfiler:
    """Wrap every op in minirl.functional (and the model's helpers) to time forward and backward."""

    SKIP = {"as_tensor", "is_grad_enabled", "Tensor"}

    def __init__(self):
        self.times = defaultdict(float)
        self.calls = defaultdict(int)
        self.saved = []

    def _timed_backward(self, name, backward):
        def wrapped(dout):
            t0 = time.perf_counter()
            out = backward(dout)
            self.times[name + " bwd"] += time.perf_counter() - t0
            self.calls[name + " bwd"] += 1
            return out
        return wrapped

    def _wrap(self, module, name, fn, has_backward: bool):
        def wrapped(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.times[name + " fwd"] += time.perf_counter() - t0
            self.calls[name + " fwd"] += 1
            if has_backward and isinstance(out, Tensor) and out._backward is not None:
                out._backward = self._timed_backward(name, out._backward)
            return out
        self.saved.append((module, name, fn))
        setattr(module, name, wrapped)

    def __enter__(self):
        for name in dir(F):
            fn = getattr(F, name)
            if callable(fn) and not name.startswith("_") and name not in self.SKIP and getattr(fn, "__module__", "") == F.__name__:
                self._wrap(F, name, fn, has_backward=True)
        self._wrap(F, "_rotate_half", F._rotate_half, has_backward=False)
        self._wrap(F, "_rotate_half_T", F._rotate_half_T, has_backward=False)
        self._wrap(minirl_model, "positions_and_mask", minirl_model.positions_and_mask, has_backward=False)
        self._wrap(minirl_model.KVCache, "update", minirl_model.KVCache.update, has_backward=False)
        self._wrap(Tensor, "backward", Tensor.backward, has_backward=False)
        return self

    def __exit__(self, *exc):
        for module, name, fn in reversed(self.saved):
            setattr(module, name, fn)

    def table(self, total_s: float, extra: dict[str, float] | None = None, top: int = 15) -> str:
        times = dict(self.times)
        # the tape's own work: Tensor.backward minus the op backwards it called
        if "backward fwd" in times:
            bwd_ops = sum(v for k, v in times.items() if k.endswith(" bwd"))
            times["tape overhead (toposort, unbroadcast, grad sums)"] = times.pop("backward fwd") - bwd_ops
            self.calls["tape overhead (toposort, unbroadcast, grad sums)"] = self.calls.pop("backward fwd")
        # nested helpers are already inside their callers' time; show them but mark them
        times.update(extra or {})
        rows = sorted(times.items(), key=lambda kv: -kv[1])[:top]
        lines = [f"  {'op':<52} {'ms':>8} {'%':>6} {'calls':>6}"]
        for name, s in rows:
            nested = " (inside rope)" if name.startswith("_rotate_half") else ""
            lines.append(f"  {name + nested:<52} {1e3 * s:8.2f} {100 * s / total_s:6.1f} {self.calls.get(name, 1):6d}")
        return "\n".join(lines)


# -------------------------------------------------------------- workloads
def build(args):
    import torch

    from minirl.export.torch import to_torch

    torch.set_num_threads(args.threads)
    cfg = TransformerConfig(**PRESETS[args.config])
    if args.seq > cfg.max_position_embeddings or args.prompt_len + args.new_tokens > cfg.max_position_embeddings:
        cfg = TransformerConfig(**{**PRESETS[args.config], "max_position_embeddings": max(args.seq, args.prompt_len + args.new_tokens)})
    # eos_id = -1 is never sampled, so every row generates all new tokens in both implementations.
    # initializer_range 0.3 (not 0.02) makes greedy choices decisive, so minirl and torch produce the
    # same tokens (checked) instead of breaking near-ties differently; the work timed is the same.
    cfg = TransformerConfig(**{**cfg.to_dict(), "initializer_range": 0.3})
    model = Transformer(cfg, seed=0, tokenizer=SimpleNamespace(pad_id=0, eos_id=-1, bos_id=1))
    return torch, cfg, model, to_torch(model)


def train_step_fns(args, torch, cfg, model, mirror):
    """(minirl step, torch step, what the minirl step includes)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (args.batch, args.seq))
    targets = tokens[:, 1:]
    try:
        from minirl.optim import AdamW
        opt = AdamW(list(model.named_parameters()), lr=1e-3, weight_decay=0.01)
        what = "forward + NLL + backward + minirl.optim.AdamW"
    except ImportError:
        opt = None
        what = "forward + NLL + backward (minirl.optim.AdamW not available yet: no optimizer step)"

    def minirl_step():
        logits = model(tokens)
        loss = F.mean(F.neg(F.gather_logprobs(logits[:, :-1], targets)))
        loss.backward()
        if opt is not None:
            opt.step()
        model.zero_grad()
        return loss

    t_tokens, t_targets = torch.from_numpy(tokens), torch.from_numpy(targets)
    t_opt = torch.optim.AdamW(mirror.parameters(), lr=1e-3, weight_decay=0.01)

    def torch_step():
        logits = mirror(t_tokens)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, cfg.vocab_size), t_targets.reshape(-1))
        loss.backward()
        if opt is not None:
            t_opt.step()
        t_opt.zero_grad(set_to_none=True)
        return loss

    return minirl_step, torch_step, what, opt


def generate_fns(args, torch, cfg, model, mirror):
    """(minirl generate, mirror generate, optional HF generate)."""
    from minirl.export.torch import greedy_generate

    prompts = np.random.default_rng(1).integers(3, cfg.vocab_size, (args.gen_batch, args.prompt_len))
    prompt_list = prompts.tolist()
    t_prompts = torch.from_numpy(prompts)
    t_mask = torch.ones_like(t_prompts, dtype=torch.bool)

    def minirl_gen():
        return model.generate(prompt_list, max_new_tokens=args.new_tokens, greedy=True).tokens

    def mirror_gen():
        return greedy_generate(mirror, t_prompts, t_mask, args.new_tokens, eos_id=-1, pad_id=0)[0]

    try:
        import tempfile

        import transformers

        from minirl.export.hf import export_hf

        transformers.logging.set_verbosity_error()
        with tempfile.TemporaryDirectory() as tmp:
            # exported without a tokenizer: no eos id, so every row runs to max_new_tokens as in minirl
            tokenizer, model.tokenizer = model.tokenizer, None
            try:
                export_hf(model, tmp)
            finally:
                model.tokenizer = tokenizer
            hf = transformers.LlamaForCausalLM.from_pretrained(tmp, attn_implementation="eager")
        hf.eval()

        def hf_gen():
            with torch.no_grad():
                return hf.generate(t_prompts, attention_mask=torch.ones_like(t_prompts), do_sample=False,
                                   max_new_tokens=args.new_tokens, use_cache=True, pad_token_id=0)
    except ImportError:  # no transformers: no HF row
        return minirl_gen, mirror_gen, None
    return minirl_gen, mirror_gen, hf_gen


def report(minirl_ms: tuple, torch_ms: tuple, flops: float, label: str = "torch") -> None:
    """Median (and min) times, GFLOP/s at the median, and the ratio of medians (and of mins)."""
    for name, (med, low) in (("minirl", minirl_ms), (label, torch_ms)):
        print(f"  {name:<10} {med:9.2f} ms (min {low:8.2f})   {flops / med / 1e6:7.2f} GFLOP/s")
    print(f"  ratio minirl/{label} = {minirl_ms[0] / torch_ms[0]:.2f}x (of mins: {minirl_ms[1] / torch_ms[1]:.2f}x)")


def main(args):
    torch, cfg, model, mirror = build(args)
    print(f"minirl benchmark: config {args.config} {cfg.vocab_size=} {cfg.hidden_size=} {cfg.num_hidden_layers=} "
          f"{cfg.num_attention_heads=} {cfg.num_key_value_heads=} {cfg.intermediate_size=}")
    print(f"threads: {args.threads} (OPENBLAS/OMP/MKL_NUM_THREADS for NumPy {np.__version__}, "
          f"torch.set_num_threads for torch {torch.__version__}; torch reports {torch.get_num_threads()})")
    print(f"parameters: {model.num_parameters():,}; median of {args.steps} after {args.warmup} warm-up")
    load = os.getloadavg()[0]
    print(f"load average (1 min) before the run: {load:.2f} on {os.cpu_count()} CPUs"
          + ("  WARNING: other processes compete for the CPUs; timings are noisy" if load > 0.5 else "") + "\n")

    if "train" not in args.skip:
        minirl_step, torch_step, what, opt = train_step_fns(args, torch, cfg, model, mirror)
        flops = 3 * forward_flops(cfg, args.batch, args.seq, args.seq)
        print(f"1. training step, batch {args.batch} x seq {args.seq}: {what}")
        report(*time_ms(minirl_step, torch_step, steps=args.steps, warmup=args.warmup), flops)
        print()
        if not args.no_profile:
            with OpProfiler() as prof:
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    minirl_step()
                total = time.perf_counter() - t0
            # the optimizer is not an op: time it apart
            extra = {}
            if opt is not None:
                logits = model(np.zeros((args.batch, args.seq), np.int64))
                F.mean(logits).backward()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    opt.step()
                extra["optimizer step (AdamW, all params)"] = time.perf_counter() - t0
                model.zero_grad()
            print(f"   minirl training step profile ({args.steps} steps, {1e3 * total / args.steps:.1f} ms/step "
                  f"under the profiler; 'fwd'/'bwd' = an op's forward / its backward closure):")
            print(prof.table(total, extra))
            print()
        if args.cprofile:
            import cProfile
            import pstats
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(args.steps):
                minirl_step()
            pr.disable()
            print("   cProfile of the minirl training step (top 15 by tottime):")
            pstats.Stats(pr).sort_stats("tottime").print_stats(15)

    if "generate" not in args.skip:
        from minirl.export.torch import to_torch
        mirror = to_torch(model)  # the training steps above moved both models; give torch minirl's weights again
        minirl_gen, mirror_gen, hf_gen = generate_fns(args, torch, cfg, model, mirror)
        same = (minirl_gen() == mirror_gen().numpy()).all(axis=1).sum()
        flops = generate_flops(cfg, args.gen_batch, args.prompt_len, args.new_tokens)
        print(f"2. greedy generation with a KV cache: {args.gen_batch} prompts x {args.prompt_len} tokens, "
              f"{args.new_tokens} new tokens (rows identical in minirl and torch: {same}/{args.gen_batch})")
        fns = [minirl_gen, mirror_gen] + ([hf_gen] if hf_gen is not None else [])
        ms_m, ms_t, *ms_hf = time_ms(*fns, steps=args.steps, warmup=args.warmup)
        report(ms_m, ms_t, flops, "torch")
        print("  (torch = the mirror module with its own KV-cache greedy loop, minirl.export.torch.greedy_generate)")
        if ms_hf:
            ms_h = ms_hf[0]
            print(f"  HF         {ms_h[0]:9.2f} ms (min {ms_h[1]:8.2f})   {flops / ms_h[0] / 1e6:7.2f} GFLOP/s   "
                  f"ratio minirl/HF = {ms_m[0] / ms_h[0]:.2f}x  (LlamaForCausalLM.generate, use_cache=True, eager)")
        print()
        if not args.no_profile:
            with OpProfiler() as prof:
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    minirl_gen()
                total = time.perf_counter() - t0
            print(f"   minirl generation profile ({1e3 * total / args.steps:.1f} ms/call under the profiler; "
                  "the rest is the sampling loop itself):")
            print(prof.table(total))


if __name__ == "__main__":
    main(ARGS)
