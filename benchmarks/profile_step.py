"""Where the time of one default GRPO step goes: sampling, forward, backward by op, optimizer, bf16 store.

    python benchmarks/profile_step.py [--threads 1] [--steps 5] [--warmup 2] [--set KEY=VALUE ...] [--vs-reference]
    python benchmarks/profile_step.py --set num_prompts=32 --set num_generations=8

The step is the one `minirl.train.train` runs, built the way `minirl run grpo`
builds it (`runs.resolve("grpo")`, `runs.build(spec)`, `make_optimizer`):
  1. `algo.batch`: sampling with the KV cache (`model.generate`), decoding and
     the verifier's rewards, group advantages (and frozen log-probs when β > 0 or μ > 1);
  2. `algo.loss`: the forward with the tape on (`completion_logprobs`) and `grpo_loss`;
  3. `loss.backward()`, split by op (every public op of `minirl.functional` is
     wrapped, and its backward closure timed) and the tape's own work;
  4. zero_grad and the finite check, `clip_grad_norm`, the AdamW update and
     the bf16 store (`Optimizer._store`, timed apart from the Adam arithmetic).

Two passes after warm-up: a plain one (only the five parts above timed, so its
total is the real step time) and an instrumented one for the per-op split of
sampling and of the training forward + backward (wrapping every op costs a few
per cent, shown as its own total; this pass takes no optimizer step). Times are
the mean per step in ms; `%` is of the plain step. `--vs-reference` then times
the fast ops against `functional.reference_ops()`, alternating on one rollout.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1, minirl's default)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per pass (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a `minirl run grpo` setting, e.g. --set num_prompts=32 (repeatable)")
    p.add_argument("--top", type=int, default=14, help="rows of the per-op table (default 14)")
    p.add_argument("--vs-reference", action="store_true",
                   help="also time the fast ops against their plain references (functional.reference_ops), "
                        "interleaved on the same rollout: sampling, and forward + backward")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # thread counts must be fixed before NumPy is imported
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import statistics  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_model import OpProfiler  # noqa: E402
from minirl import functional as F  # noqa: E402
from minirl import runs  # noqa: E402
from minirl.model import Transformer  # noqa: E402
from minirl.optim import Optimizer, clip_grad_norm, make_optimizer, make_schedule  # noqa: E402
from minirl.train import check_finite  # noqa: E402


def _value(text: str):
    """'32' -> 32, '1e-4' -> 1e-4, 'true' -> True, anything else stays a string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


class Parts:
    """Wall time per named part, summed over steps; `timed(obj, name)` wraps a method in place."""

    def __init__(self):
        self.times = defaultdict(float)
        self.saved = []

    def add(self, name, seconds):
        self.times[name] += seconds

    def wrap(self, owner, attr, name):
        fn = getattr(owner, attr)

        def wrapped(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.times[name] += time.perf_counter() - t0

        self.saved.append((owner, attr, fn))
        setattr(owner, attr, wrapped)

    def restore(self):
        for owner, attr, fn in reversed(self.saved):
            setattr(owner, attr, fn)
        self.saved = []


def setup(overrides: dict):
    """The default GRPO job's policy, algorithm, optimizer, schedule and run rng, as `minirl run grpo` builds them."""
    spec = runs.resolve("grpo", **overrides)
    policy, _ref, algo = runs.build(spec)
    named = list(policy.named_parameters())
    optimizer = make_optimizer(named, spec["optimizer"], spec["train"].precision)
    schedule = make_schedule(spec["optimizer"], spec["train"].steps * getattr(algo, "updates_per_step", 1))
    rng = np.random.default_rng([spec["train"].seed, 1])
    return spec, policy, algo, named, optimizer, schedule, rng


def step(parts: Parts, step_i, spec, policy, algo, named, optimizer, schedule, rng):
    """`minirl.train.train`'s loop body, each part timed."""
    t = time.perf_counter
    t0 = t()
    batch = algo.batch(policy, rng, step_i)
    parts.add("1 batch (sample + rewards + advantages)", t() - t0)
    for mb in algo.minibatches(batch, rng):
        t0 = t()
        loss, _stats = algo.loss(policy, mb)
        parts.add("2 forward + loss (tape on)", t() - t0)
        t0 = t()
        optimizer.zero_grad()
        loss.backward()
        parts.add("3 backward", t() - t0)
        t0 = t()
        check_finite(step_i, loss, named)
        grad_clip = spec["train"].grad_clip
        if grad_clip:
            clip_grad_norm(optimizer.params, grad_clip)
        parts.add("4 finite check + clip_grad_norm", t() - t0)
        t0 = t()
        optimizer.lr = optimizer.base_lr * schedule(optimizer.step_count)
        optimizer.step()
        parts.add("5 optimizer step (AdamW + bf16 store)", t() - t0)


def main(args):
    overrides = dict(kv.split("=", 1) for kv in args.set)
    overrides = {k: _value(v) for k, v in overrides.items()}
    state = setup(overrides)
    spec, policy, algo, named, optimizer, _schedule, rng = state
    c = spec["grpo"]
    print(f"one GRPO step: {c.num_prompts} prompts x {c.num_generations} = {c.num_prompts * c.num_generations} "
          f"sequences of task {c.task}, precision {spec['train'].precision}, optimizer "
          f"{type(optimizer).__name__}, beta {c.beta}, num_iterations {c.num_iterations}")
    print(f"threads {args.threads}; NumPy {np.__version__}; mean of {args.steps} steps after {args.warmup} warm-up")
    load = os.getloadavg()[0]
    print(f"load average (1 min): {load:.2f} on {os.cpu_count()} CPUs"
          + ("  WARNING: other processes share the CPUs; timings are noisy" if load > 0.5 else "") + "\n")

    n = 0
    for _ in range(args.warmup):
        step(Parts(), n, *state)
        n += 1

    # 1) plain pass: only the big parts timed; generate and _store wrapped (a call each, negligible cost)
    plain = Parts()
    plain.wrap(Transformer, "generate", "   of which model.generate (KV cache)")
    plain.wrap(Optimizer, "_store", "   of which bf16 store (_store)")
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(plain, n, *state)
        n += 1
    total = time.perf_counter() - t0
    plain.restore()

    # 2) instrumented pass: every functional op's forward and backward, sampling apart from training
    sampling, training = OpProfiler(), OpProfiler()
    t_sampling = t_training = 0.0
    for _ in range(args.steps):
        t0 = time.perf_counter()
        with sampling:
            batch = algo.batch(policy, rng, n)
        t1 = time.perf_counter()
        with training:
            for mb in algo.minibatches(batch, rng):
                loss, _ = algo.loss(policy, mb)
                optimizer.zero_grad()
                loss.backward()
        t_sampling += t1 - t0
        t_training += time.perf_counter() - t1
        optimizer.zero_grad()  # this pass only measures; the weights stay put
        n += 1

    per = 1e3 / args.steps
    order = ["1 batch", "   of which model.generate", "2 forward", "3 backward", "4 finite", "5 optimizer",
             "   of which bf16"]
    rows = sorted(plain.times.items(), key=lambda kv: next(i for i, o in enumerate(order) if kv[0].startswith(o)))
    print(f"step: {per * total:.1f} ms  (the parts, plain pass)")
    print(f"  {'part':<48} {'ms':>8} {'%':>6}")
    for name, s in rows:
        print(f"  {name:<48} {per * s:8.2f} {100 * s / total:6.1f}")
    rest = total - sum(s for k, s in plain.times.items() if not k.startswith("   "))
    print(f"  {'(loop overhead)':<48} {per * rest:8.2f} {100 * rest / total:6.1f}")

    # the per-op split, ms per step; % of the plain step
    for title, prof, t_inst in (("sampling (algo.batch: no tape, KV cache)", sampling, t_sampling),
                                ("training forward + backward ('fwd' = the op, 'bwd' = its backward closure)",
                                 training, t_training)):
        print(f"\nby op, {title}: {per * t_inst:.1f} ms/step instrumented")
        table = prof.table(total, top=args.top).splitlines()
        print(table[0])
        for line in table[1:]:
            name, ms, pct, calls = line.rsplit(None, 3)
            print(f"  {name.strip():<52} {float(ms) / args.steps:8.2f} {pct:>6} {int(calls) // args.steps:6d}")
        fwd = sum(v for k, v in prof.times.items() if k.endswith(" fwd") and k != "backward fwd")
        bwd = sum(v for k, v in prof.times.items() if k.endswith(" bwd"))
        print(f"  ops' forwards {per * fwd:.1f} ms, ops' backwards {per * bwd:.1f} ms per step")


def vs_reference(state, steps: int) -> None:
    """Fast ops vs `functional.reference_ops()`, alternating on one rollout: same bits, how much faster."""
    spec, policy, algo, _named, optimizer, _schedule, rng = state
    batch = algo.batch(policy, rng, 0)

    def sample():
        algo.batch(policy, np.random.default_rng(1), 0)

    def forward_backward():
        loss, _ = algo.loss(policy, batch)
        loss.backward()
        optimizer.zero_grad()

    print(f"\nfast ops vs their plain references (functional.reference_ops), alternating, median of {steps}:")
    for name, fn in (("sampling (algo.batch)", sample), ("forward + backward", forward_backward)):
        times = {False: [], True: []}
        for _ in range(steps + 1):  # the first round warms up
            for reference in (False, True):
                t0 = time.perf_counter()
                if reference:
                    with F.reference_ops():
                        fn()
                else:
                    fn()
                times[reference].append(time.perf_counter() - t0)
        fast, ref = (statistics.median(times[r][1:]) for r in (False, True))
        print(f"  {name:<24} fast {1e3 * fast:7.1f} ms   reference {1e3 * ref:7.1f} ms   ratio {fast / ref:.3f}")


if __name__ == "__main__":
    main(ARGS)
    if ARGS.vs_reference:
        vs_reference(setup({k: _value(v) for k, v in (kv.split("=", 1) for kv in ARGS.set)}), max(ARGS.steps, 8))
