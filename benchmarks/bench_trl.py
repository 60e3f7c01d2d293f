"""A GRPO step of minirl vs Hugging Face TRL's GRPOTrainer: the same step on the same model, one CPU thread each.

    python benchmarks/bench_trl.py [--steps 5] [--warmup 1] [--threads 1] [--num-prompts 32] [--num-generations 8]

Both sides start from the shipped SFT model: TRL gets it as `minirl export
--format trl` writes it (a Hugging Face LlamaForCausalLM, fp32, with the chat
template), with that recipe's GRPOConfig (`minirl.export.trl.trl_recipe`: the
field-by-field mapping, gradient checkpointing and bf16 off, one rollout per
update, the task's verifier as the reward function). One step is a rollout of
num_prompts x num_generations completions (sampling with the KV cache),
rewards, the GRPO loss, the backward and the AdamW update; minirl's also rounds
the stored weights to bf16 after the update (its default precision), TRL
trains in fp32.

Interleaved: a callback runs one minirl step at the end of every TRL step, so
both see the same machine load. TRL's step is timed from the end of the
previous minirl step to its own `on_step_end` (data loading, generation,
reward, loss, backward, optimizer, logging: its whole loop); minirl's is the
body of `minirl.train.train`. The ratio is of medians. Exits with a message
(status 0) where trl is not installed.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5, help="timed steps of each (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each first (default 1)")
    p.add_argument("--threads", type=int, default=1, help="threads for NumPy's BLAS and torch (default 1)")
    p.add_argument("--num-prompts", type=int, default=32, help="prompts per step (default 32)")
    p.add_argument("--num-generations", type=int, default=8, help="completions per prompt (default 8)")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # thread counts must be fixed before NumPy and torch are imported
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        os.environ[var] = str(ARGS.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.util  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(args) -> int:
    missing = [m for m in ("trl", "torch", "transformers", "datasets") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed (pip install minirl[trl])")
        return 0
    import numpy as np
    import torch
    import transformers
    import trl
    from datasets import load_dataset

    from minirl.export.trl import export_trl
    from profile_step import Parts, setup, step

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    total_steps = args.warmup + args.steps
    overrides = dict(num_prompts=args.num_prompts, num_generations=args.num_generations, steps=total_steps + 1)

    # 1) minirl's side: the job `minirl run grpo` builds, at this batch
    state = setup(overrides)
    spec = state[0]
    minirl_times: list[float] = []

    def minirl_step():
        t0 = time.perf_counter()
        step(Parts(), len(minirl_times), *state)
        minirl_times.append(time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        # 2) TRL's side: the exported recipe, built as its train.py builds it
        config_path = Path(tmp) / "grpo.toml"
        config_path.write_text(spec.to_toml())
        out, _rows, _ = export_trl(config_path, Path(tmp) / "trl")
        recipe = json.loads((out / "recipe.json").read_text())
        cfg = dict(recipe["config"], max_steps=total_steps, save_strategy="no", use_cpu=True,
                   dataloader_num_workers=0, disable_tqdm=True)
        config = trl.GRPOConfig(output_dir=str(Path(tmp) / "output"), **cfg)
        sys.path.insert(0, str(out))
        from reward import task_reward

        tokenizer = transformers.AutoTokenizer.from_pretrained(out / "model")
        model = transformers.AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32)
        data = load_dataset("json", data_files=str(out / recipe["data"]), split="train")
        trl_times: list[float] = []
        mark = [0.0]

        class Interleave(transformers.TrainerCallback):
            """Time TRL's step, then run one minirl step, at every on_step_end."""

            def on_train_begin(self, *a, **k):
                mark[0] = time.perf_counter()

            def on_step_end(self, *a, **k):
                trl_times.append(time.perf_counter() - mark[0])
                minirl_step()
                mark[0] = time.perf_counter()

        trainer = trl.GRPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                                  reward_funcs=task_reward, callbacks=[Interleave()])
        trainer.remove_callback(transformers.PrinterCallback)  # the per-step metrics dicts
        trainer.train()

    m = statistics.median(minirl_times[args.warmup:])
    t = statistics.median(trl_times[args.warmup:])
    load = os.getloadavg()[0]
    print(f"GRPO step, {args.num_prompts} prompts x {args.num_generations} completions of task {spec['grpo'].task}, "
          f"the shipped SFT model; {args.threads} thread(s) each; median of {args.steps} after {args.warmup} warm-up")
    print(f"load average (1 min): {load:.2f} on {os.cpu_count()} CPUs"
          + ("  WARNING: other processes share the CPUs; timings are noisy" if load > 0.5 else ""))
    print(f"  TRL {trl.__version__} GRPOTrainer (torch {torch.__version__}, transformers {transformers.__version__}): "
          f"{1e3 * t:9.1f} ms/step  (all: {', '.join(f'{1e3 * x:.0f}' for x in trl_times)})")
    print(f"  minirl (NumPy {np.__version__}):{' ' * 34}{1e3 * m:9.1f} ms/step  "
          f"(all: {', '.join(f'{1e3 * x:.0f}' for x in minirl_times)})")
    print(f"  minirl is {t / m:.1f}x faster than TRL (ratio minirl/TRL = {m / t:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
