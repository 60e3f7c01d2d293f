"""Whole jobs: make a run directory, train, evaluate, save, and write report.json.

The CLI parses options into config dataclasses and calls one of these; tests
and tutorials call them directly.
"""

from __future__ import annotations

import time
from dataclasses import asdict, is_dataclass
from datetime import datetime
from pathlib import Path

from minirl.checkpoint import RunDir
from minirl.evaluate import benchmark
from minirl.loading import load
from minirl.model import Transformer, TransformerConfig
from minirl.precision import get_policy
from minirl.rl import make_algorithm
from minirl.rl.sft import SFT, Pretrain, PretrainConfig, SFTConfig
from minirl.tasks import TASKS, CharTokenizer
from minirl.train import TrainConfig, train

BENCH_N = 200
"""Held-out problems per task in every benchmark."""


def new_run_dir(out: str | Path | None, kind: str) -> RunDir:
    """`out`, or runs/<kind>-<timestamp>; refuses to mix into a non-empty run directory."""
    path = Path(out) if out else Path("runs") / f"{kind}-{datetime.now():%Y%m%d-%H%M%S}"
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"run directory {path} already exists and is not empty; choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    return RunDir(path)


def _storage_dtype(precision: str) -> str:
    """Checkpoint dtype that keeps a run's stored weights exactly (bf16 runs save bf16, others fp32)."""
    return "bf16" if precision in ("bf16", "pure_bf16") else "fp32"


def _config_dict(**configs) -> dict:
    return {k: asdict(v) if is_dataclass(v) else v for k, v in configs.items()}


def pretrain(model_cfg: TransformerConfig, data_cfg: PretrainConfig, train_cfg: TrainConfig,
             out=None, progress: bool = True, bench_n: int | None = None) -> dict:
    """Train a base model from scratch on the raw task mixture; returns the report dict."""
    bench_n = BENCH_N if bench_n is None else bench_n
    tok = CharTokenizer()
    if model_cfg.vocab_size != tok.vocab_size:
        raise ValueError(f"TransformerConfig.vocab_size must equal the tokenizer's {tok.vocab_size}, got {model_cfg.vocab_size}")
    run = new_run_dir(out, "pretrain")
    run.write_config(_config_dict(command="pretrain", model=model_cfg, data=data_cfg, train=train_cfg))
    model = Transformer(model_cfg, seed=train_cfg.seed, tokenizer=tok)
    result = train(model, Pretrain(data_cfg, tok), train_cfg, run=run, progress=progress)
    run.save_model("final", model, _storage_dtype(train_cfg.precision))
    report = {
        "command": "pretrain", "seed": train_cfg.seed, "steps": len(result.history),
        "interrupted": result.interrupted, "wall_seconds": result.wall_seconds,
        "parameters": model.num_parameters(), "final_loss": result.history[-1]["loss"] if result.history else None,
        "accuracy_raw": benchmark(model, data_cfg.tasks, n=bench_n, prompt_format="raw"),
        "checkpoint": str(run.checkpoint_path("final")),
    }
    run.write_json("report", report)
    return report


def sft(init, data_cfg: SFTConfig, train_cfg: TrainConfig, out=None, progress: bool = True,
        bench_n: int | None = None) -> dict:
    """Instruction-tune `init` (a shipped name or a checkpoint) on chat-format examples."""
    bench_n = BENCH_N if bench_n is None else bench_n
    model = load(init)
    run = new_run_dir(out, "sft")
    run.write_config(_config_dict(command="run sft", init=str(init), data=data_cfg, train=train_cfg))
    tasks = tuple(sorted(set(data_cfg.tasks)))
    before = benchmark(model, tasks, n=bench_n)
    start = time.perf_counter()
    result = train(model, SFT(data_cfg, model.tokenizer), train_cfg, run=run, progress=progress)
    run.save_model("final", model, _storage_dtype(train_cfg.precision))
    report = {
        "command": "run sft", "init": str(init), "seed": train_cfg.seed, "steps": len(result.history),
        "interrupted": result.interrupted, "wall_seconds": time.perf_counter() - start,
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "accuracy": {"before": before, "after": benchmark(model, tasks, n=bench_n)},
        "checkpoint": str(run.checkpoint_path("final")),
    }
    run.write_json("report", report)
    return report


# ------------------------------------------------------------------------ RL
PAPER = {
    "sparsity_range": "68.5 % to 96.0 % (Table 1, 7 algorithms, 10 models)",
    "sparsity_by_algorithm": {
        "grpo": [68.5, "GRPO, DeepSeek-Math-7B (Table 1)"],
        "ppo": [80.8, "PPO, Mistral-7B (Table 1)"],
    },
    "sparsity_kl": "GRPO 69.8 % with KL, 68.8 % without",
    "sft_sparsity": "6 % to 15 %",
    "rank_range": "99.2 % to 99.8 % of full rank (mean over matrices)",
    "tol": 1e-5,
}
"""Paper 1's headline numbers (docs/PAPERS.md, arXiv 2505.11711), printed beside minirl's."""


def update_analysis(theta0: dict, theta1: dict, precision: str, ignore=("value_head.weight", "score.weight")) -> dict:
    """Sparsity (bf16 tol 1e-5 and bitwise), per-tensor, and update rank of θ1 − θ0."""
    from minirl.analysis import compare_state_dicts, rank_report

    theta0 = {k: v for k, v in theta0.items() if k not in ignore}
    theta1 = {k: v for k, v in theta1.items() if k not in ignore}
    sp = compare_state_dicts(theta0, theta1, tol=1e-5, dtype="bf16")
    rk = rank_report(theta0, theta1, dtype="bf16" if precision != "fp32" else "fp32")
    out = {
        "sparsity": {
            "overall": sp.overall, "bitwise": sp.bitwise, "tol": 1e-5, "n_params": sp.n_params,
            "per_tensor": sp.per_tensor, "per_tensor_bitwise": sp.per_tensor_bitwise,
            "by_tol": {f"{t:g}": v for t, v in sp.by_tol.items()},
        },
        "rank": {"mean_fraction": rk.mean_fraction, "per_tensor": rk.per_tensor},
    }
    if precision == "fp32":  # the weights are not bf16: also count exact fp32 changes
        fp = compare_state_dicts(theta0, theta1, tol=0.0, dtype="fp32")
        out["sparsity"]["fp32_exact"] = fp.bitwise
    return out


def relative_step(lr: float, model) -> dict:
    """lr / rms(w) over the 2-D weight matrices: the regime knob of docs/PAPERS.md's scale matching."""
    import numpy as np

    mats = [p.data for name, p in model.named_parameters() if p.ndim == 2 and "value_head" not in name]
    rms = float(np.sqrt(sum(float((m.astype(np.float64) ** 2).sum()) for m in mats) / sum(m.size for m in mats)))
    return {"lr": lr, "rms_w": rms, "lr_over_rms": lr / rms}


def final_kl(policy, ref, task: str, seed: int, n: int = 256, temperature: float = 1.0) -> dict:
    """Mean per-sequence KL(π‖π_ref) on fresh samples of the final policy (k1 and k3 estimators)."""
    import numpy as np

    from minirl.rl.kl import k1, k3
    from minirl.rl.rollout import frozen_logprobs, sample_rollout

    rollout = sample_rollout(policy, task, np.random.default_rng([seed, 7]), n, 1, temperature=temperature)
    logp, ref_logp = frozen_logprobs(policy, rollout, temperature), frozen_logprobs(ref, rollout, temperature)
    m = rollout.completion_mask
    return {"k1": float((k1(logp, ref_logp) * m).sum(1).mean()), "k3": float((k3(logp, ref_logp) * m).sum(1).mean()),
            "n": n}


def rl(algo_name: str, algo_cfg, train_cfg: TrainConfig, init="sft", out=None, progress: bool = True,
       bench_n: int | None = None) -> dict:
    """An RL run from `init`: before/after accuracy on every task, KL, and what the update did to the weights."""
    bench_n = BENCH_N if bench_n is None else bench_n
    needs_value = algo_name == "ppo"
    policy = load(init, value_head=needs_value)
    ref = load(init)
    run = new_run_dir(out, algo_name)
    run.write_config(_config_dict(command=f"run {algo_name}", init=str(init), algo=algo_cfg, train=train_cfg))
    algo = make_algorithm(algo_name, algo_cfg, ref)
    store = get_policy(train_cfg.precision)
    theta0 = {k: store.store(v) for k, v in policy.state_dict().items()}  # θ0 as stored under the policy
    regime = relative_step(train_cfg.lr, policy)
    tasks = list(TASKS)
    before = benchmark(policy, tasks, n=bench_n)
    result = train(policy, algo, train_cfg, run=run, progress=progress)
    run.save_model("final", policy, _storage_dtype(train_cfg.precision))
    after = benchmark(policy, tasks, n=bench_n)
    task = algo_cfg.task
    report = {
        "algorithm": algo_name, "task": task, "init": str(init), "seed": train_cfg.seed,
        "steps": len(result.history), "interrupted": result.interrupted, "precision": train_cfg.precision,
        "wall_seconds": result.wall_seconds,
        "accuracy": {"before": before[task], "after": after[task]},
        "tax": {t: {"before": before[t], "after": after[t]} for t in tasks if t != task},
        "reward_curve": [h.get("reward", float("nan")) for h in result.history],
        "train_accuracy_curve": [h.get("accuracy", float("nan")) for h in result.history],
        "kl": final_kl(policy, ref, task, train_cfg.seed),
        "regime": regime,
        "paper": PAPER,
        "checkpoint": str(run.checkpoint_path("final")),
        "run_dir": str(run.path),
    }
    report.update(update_analysis(theta0, policy.state_dict(), train_cfg.precision))
    run.write_json("report", report)
    return report
