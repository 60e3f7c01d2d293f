"""The `minirl` command: thin click commands that parse options and call minirl.

Options come from the config dataclasses (`minirl.options`), so `--help`
shows each field's docstring, and a value a config rejects is a usage error.
"""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console

from minirl.model import TransformerConfig
from minirl.options import build, dataclass_options
from minirl.rl.sft import PretrainConfig, SFTConfig
from minirl.train import TrainConfig

console = Console(stderr=True)


def _emit(obj: dict, as_json: bool, render) -> None:
    """Print `obj` as JSON on stdout (--json) or as rich text."""
    if as_json:
        click.echo(json.dumps(obj, indent=2, default=str))
    else:
        render(obj)


def _load_or_fail(ckpt: str, param: str = "CKPT"):
    """Load a model, turning a missing or broken checkpoint into a usage error."""
    from minirl.checkpoint import CheckpointError
    from minirl.loading import load

    try:
        return load(ckpt)
    except (FileNotFoundError, CheckpointError) as e:
        raise click.BadParameter(str(e), param_hint=param) from None


def _guard(fn, *args, **kwargs):
    """Run a job; turn the errors a user can fix into usage errors, not tracebacks."""
    from minirl.checkpoint import CheckpointError
    from minirl.train import TrainingError

    try:
        return fn(*args, **kwargs)
    except (FileExistsError, FileNotFoundError, CheckpointError) as e:
        raise click.UsageError(str(e)) from None
    except TrainingError as e:
        console.print(f"[bold red]training stopped:[/] {e}")
        sys.exit(3)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted mid-step[/] (a second Ctrl-C): the run directory keeps config.json and "
                      "metrics.jsonl of every finished step, and checkpoints/last if --checkpoint-every saved one. "
                      "One Ctrl-C finishes the current step, saves, and still writes the report.")
        sys.exit(130)


common_options = [
    click.option("--out", type=click.Path(file_okay=False), default=None,
                 help="Run directory to create (default: runs/<command>-<timestamp>)."),
    click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout."),
    click.option("--progress/--no-progress", default=True, help="Show a progress bar."),
]


def with_common(fn):
    for option in reversed(common_options):
        fn = option(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="minirl")
def main():
    """minirl: watch RL fine-tune a tiny language model, and measure what it did to the weights.

    \b
    Start with:
      minirl run grpo --report     RL on the shipped SFT model, with the sparsity report
      minirl eval sft              per-task accuracy of a model
      minirl sample sft --prompt "Q:12+34\\nA:"
    """


# ------------------------------------------------------------------ pretrain

PRETRAIN_MIXTURE = dict(weights=(4.0, 1.0, 1.0, 1.0, 1.0, 1.0))
"""The shipped base model's mixture: addition, the hardest task, four times as often as each other task."""
PRETRAIN_DEFAULTS = dict(steps=2000, lr=3e-3, schedule="cosine", warmup_steps=100, weight_decay=0.0)
SFT_DEFAULTS = dict(steps=300, lr=1e-3, schedule="cosine", warmup_steps=20, weight_decay=0.0)


@main.command()
@dataclass_options(TransformerConfig, exclude=("vocab_size", "value_head", "reward_head"))
@dataclass_options(PretrainConfig, defaults=PRETRAIN_MIXTURE)
@dataclass_options(TrainConfig, defaults=PRETRAIN_DEFAULTS)
@with_common
def pretrain(out, as_json, progress, **kw):
    """Pretrain a base model from scratch on the raw-text mixture of every task."""
    from minirl import runs
    from minirl.tasks import CharTokenizer

    model_cfg = build(TransformerConfig, {**kw, "vocab_size": CharTokenizer().vocab_size})
    report = _guard(runs.pretrain, model_cfg, build(PretrainConfig, kw), build(TrainConfig, kw), out, progress)
    _emit(report, as_json, _render_accuracy_report)


# ----------------------------------------------------------------------- run
@main.group()
def run():
    """Fine-tune a model: sft, or an RL algorithm."""


@run.command("sft")
@click.option("--init", default="base", show_default=True, help="Model to start from: base, sft, or a checkpoint path.")
@dataclass_options(SFTConfig)
@dataclass_options(TrainConfig, defaults=SFT_DEFAULTS)
@with_common
def run_sft(init, out, as_json, progress, **kw):
    """Instruction-tune a model on chat-format examples (loss on answers only)."""
    from minirl import runs

    report = _guard(runs.sft, init, build(SFTConfig, kw), build(TrainConfig, kw), out, progress)
    _emit(report, as_json, _render_accuracy_report)


RL_TRAIN_DEFAULTS = {
    "grpo": dict(steps=150, lr=2e-4, schedule="constant", grad_clip=1.0),
    "ppo": dict(steps=250, lr=1e-4, schedule="constant", grad_clip=1.0),
    "reinforce": dict(steps=150, lr=2e-4, schedule="constant", grad_clip=1.0),
    "rloo": dict(steps=150, lr=2e-4, schedule="constant", grad_clip=1.0),
}
"""Per-algorithm defaults of the shared training options (the rest are TrainConfig's)."""


def _rl_command(name: str, config_cls, summary: str):
    @click.option("--init", default="sft", show_default=True, help="Policy (and reference) to start from: sft, base, or a checkpoint path.")
    @click.option("--report/--no-report", "show_report", default=True, show_default=True,
                  help="Print the full report (accuracy, alignment tax, KL, sparsity, rank, paper numbers).")
    @dataclass_options(config_cls)
    @dataclass_options(TrainConfig, defaults=RL_TRAIN_DEFAULTS.get(name, {}))
    @with_common
    def command(init, show_report, out, as_json, progress, **kw):
        from minirl import runs
        from minirl.report import render

        report = _guard(runs.rl, name, build(config_cls, kw), build(TrainConfig, kw), init, out, progress)
        if as_json:
            click.echo(json.dumps(report, indent=2, default=str))
        else:
            render(report, detail=show_report)

    command.__doc__ = f"""{summary}

    Trains the shipped SFT model (or --init) on the task's verifier reward,
    then reports accuracy before/after on every task (the alignment tax), KL
    to the reference, and the update's sparsity and rank beside the paper's.
    Every run directory holds config.json, metrics.jsonl, checkpoints/final and
    report.json; `minirl report DIR` re-renders the report."""
    return run.command(name)(command)


def _register_rl_commands():
    from minirl.rl import algorithms

    for name, (config_cls, algo_cls) in algorithms().items():
        _rl_command(name, config_cls, (algo_cls.__doc__ or name.upper()).strip().splitlines()[0])


_register_rl_commands()


@main.command()
@click.argument("run_dir", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print report.json instead of rendering it.")
@click.option("--brief", is_flag=True, help="Skip the per-matrix tables.")
def report(run_dir, as_json, brief):
    """Re-render the report of a finished RL run directory."""
    from minirl.report import load_report, render

    try:
        r = load_report(run_dir)
    except (FileNotFoundError, ValueError) as e:
        raise click.BadParameter(str(e), param_hint="RUN_DIR") from None
    if as_json:
        click.echo(json.dumps(r, indent=2))
    elif "algorithm" not in r:
        raise click.BadParameter(f"{run_dir}: report.json is from `minirl {r.get('command', '?')}`, not an RL run; "
                                 "only RL reports render (--json prints any report)", param_hint="RUN_DIR")
    else:
        render(r, detail=not brief)


# ---------------------------------------------------------------------- eval
@main.command("eval")
@click.argument("ckpt")
@click.option("--tasks", default=None, help="Comma-separated tasks (default: all).")
@click.option("--n", "n", default=200, show_default=True, type=click.IntRange(min=1), help="Held-out problems per task.")
@click.option("--format", "prompt_format", type=click.Choice(["chat", "raw"]), default="chat", show_default=True,
              help="chat: 'Q:..\\nA:' prompts (SFT/RL models); raw: '12+34=' prompts (base models).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def eval_cmd(ckpt, tasks, n, prompt_format, as_json):
    """Greedy exact-match accuracy per task of CKPT (base, sft, or a checkpoint path)."""
    from minirl.evaluate import benchmark
    from minirl.tasks import get_task

    model = _load_or_fail(ckpt)
    names = None
    if tasks:
        names = [t.strip() for t in tasks.split(",") if t.strip()]
        for t in names:
            try:
                get_task(t)
            except ValueError as e:
                raise click.BadParameter(str(e), param_hint="--tasks") from None
    scores = benchmark(model, names, n=n, prompt_format=prompt_format)
    _emit({"checkpoint": ckpt, "format": prompt_format, "n": n, "accuracy": scores}, as_json,
          lambda r: _render_accuracy(r["accuracy"], f"{ckpt} ({prompt_format} prompts, n={n})"))


# -------------------------------------------------------------------- sample
@main.command()
@click.argument("ckpt")
@click.option("--prompt", "prompts", multiple=True, required=True,
              help='Prompt text, e.g. "Q:12+34\\nA:" (escape \\n is understood); repeat for a batch.')
@click.option("--max-new-tokens", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--greedy/--sample", default=False, show_default=True, help="Argmax decoding, or sampling.")
@click.option("--temperature", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--top-k", default=None, type=click.IntRange(min=1), help="Sample from the k most likely tokens.")
@click.option("--num-samples", default=1, show_default=True, type=click.IntRange(min=1), help="Samples per prompt.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def sample(ckpt, prompts, max_new_tokens, greedy, temperature, top_k, num_samples, seed, as_json):
    """Complete prompts with CKPT (base, sft, or a checkpoint path)."""
    import numpy as np

    from minirl.evaluate import complete

    model = _load_or_fail(ckpt)
    texts = [p.encode().decode("unicode_escape") for p in prompts for _ in range(num_samples)]
    try:
        outs = complete(model, texts, max_new_tokens, greedy=greedy, rng=np.random.default_rng(seed),
                        temperature=temperature, top_k=top_k)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--prompt") from None
    rows = [{"prompt": p, "completion": c} for p, c in zip(texts, outs)]
    _emit({"checkpoint": ckpt, "samples": rows}, as_json,
          lambda r: [click.echo(f"{s['prompt']!r} -> {s['completion']!r}") for s in r["samples"]])


# -------------------------------------------------------------------- export
@main.command()
@click.argument("ckpt")
@click.option("--format", "fmt", type=click.Choice(["torch", "hf"]), required=True,
              help="torch: a PyTorch nn.Module + state_dict; hf: a LlamaForCausalLM directory.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to write.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="Weight dtype of the hf export.")
def export(ckpt, fmt, out, dtype):
    """Export CKPT for PyTorch or Hugging Face transformers."""
    model = _load_or_fail(ckpt)
    try:
        if fmt == "torch":
            from minirl.export.torch import export_torch

            path = export_torch(model, out)
        else:
            from minirl.export.hf import export_hf

            path = export_hf(model, out, dtype=dtype)
    except ImportError as e:
        raise click.UsageError(str(e)) from None
    console.print(f"wrote {fmt} export to [bold]{path or out}[/]")


# -------------------------------------------------------------------- render
def _render_accuracy(scores: dict, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("task")
    table.add_column("accuracy", justify="right")
    for task, acc in scores.items():
        table.add_row(task, f"{100 * acc:.1f} %")
    Console().print(table)


def _render_accuracy_report(report: dict) -> None:
    if "accuracy_raw" in report:
        _render_accuracy(report["accuracy_raw"], f"{report['command']}: raw-prompt accuracy")
    else:
        from rich.table import Table

        table = Table(title=f"{report['command']}: accuracy before -> after")
        for col in ("task", "before", "after"):
            table.add_column(col, justify="right" if col != "task" else "left")
        for task, b in report["accuracy"]["before"].items():
            table.add_row(task, f"{100 * b:.1f} %", f"{100 * report['accuracy']['after'][task]:.1f} %")
        Console().print(table)
    note = " (interrupted)" if report.get("interrupted") else ""
    Console().print(f"{report['steps']} steps in {report['wall_seconds']:.1f} s{note}; checkpoint: {report['checkpoint']}")


if __name__ == "__main__":
    main()
