"""The `minirl` command: thin click commands that parse options and call minirl.

Options come from the config dataclasses (`minirl.options`), so `--help`
shows each field's docstring, and a value a config rejects is a usage error.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import click
from rich.console import Console

from minirl.experiments.merging import METHODS as MERGING_METHODS
from minirl.experiments.regime import POINTS as REGIME_POINTS
from minirl.options import dataclass_options

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
    from minirl.rl.preference import DataError
    from minirl.train import TrainingError

    try:
        return fn(*args, **kwargs)
    except (FileExistsError, FileNotFoundError, CheckpointError, DataError) as e:
        raise click.UsageError(str(e)) from None
    except TrainingError as e:
        console.print(f"[bold red]training stopped:[/] {e}")
        sys.exit(3)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted mid-step[/] (a second Ctrl-C): the run directory keeps config.toml, the "
                      "metrics of every finished step, and checkpoints/last if --checkpoint-every saved one: "
                      "continue it with --resume DIR. One Ctrl-C finishes the current step, saves, and still "
                      "writes the report.")
        sys.exit(130)


def _explicit(ctx: click.Context, kw: dict) -> dict:
    """The options the user typed (or set through the environment), as settings for `runs.resolve`."""
    from click.core import ParameterSource

    typed = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {k: v for k, v in kw.items() if ctx.get_parameter_source(k) in typed}


def _job_command(group, name: str, summary: str, details: str, exclude=()):
    """A command for job `name`: one option per config field, its default the resolved preset's value."""
    from minirl import runs

    spec = runs.resolve(name)  # dataclass defaults + the preset: what the command runs with no options
    option_decorators = []
    for section, cfg in spec.configs.items():
        values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        option_decorators.append(dataclass_options(type(cfg), defaults=values, exclude=exclude))

    def command(config, resume, out, as_json, progress, show_report=True, **kw):
        ctx = click.get_current_context()
        settings = _explicit(ctx, kw)
        if resume is not None:
            typed = [f"--{k.replace('_', '-')}" for k in settings] + (["--config"] if config else []) + (
                ["--out"] if out else [])
            if typed:
                raise click.UsageError(f"--resume continues {resume} with its own config.toml; drop "
                                       f"{', '.join(typed)} (to change settings, start a new run with "
                                       f"--config {resume}/config.toml)")
            found = _guard(runs.job_name, resume)
            if found != name:
                raise click.UsageError(f"{resume} is a run of `minirl {runs.command_of(found)}`; resume it with "
                                       f"`minirl {runs.command_of(found)} --resume {resume}`")
            report = _guard(runs.resume, resume, progress)
        else:
            try:
                job = runs.resolve(name, config, **settings)
            except ValueError as e:
                raise click.UsageError(str(e)) from None
            report = _guard(runs.execute, job, out, progress)
        if as_json:
            click.echo(json.dumps(report, indent=2, default=str))
        else:
            from minirl.report import render

            render(report, detail=show_report)

    command.__doc__ = f"{summary}\n\n{details}"
    for decorate in reversed(option_decorators):
        command = decorate(command)
    if name != "pretrain":
        command = click.option("--init", default=spec.init, show_default=True,
                               help="Model to start from: sft, base, or a checkpoint path (and the reference "
                                    "model of the KL terms).")(command)
        command = click.option("--report/--no-report", "show_report", default=True, show_default=True,
                               help="Print the full report (per-matrix sparsity and rank tables too).")(command)
    for option in reversed(common_options):
        command = option(command)
    return group.command(name)(command)


common_options = [
    click.option("--config", type=click.Path(dir_okay=True), default=None,
                 help="A TOML file of settings (sections as in a run's config.toml; a run directory's "
                      "config.toml reruns that run), or `paper`: the papers' sparse regime (pure bf16 weights, "
                      "twice the steps; minirl/presets/paper/). Options typed on the command line win."),
    click.option("--resume", type=click.Path(exists=True, file_okay=False), default=None,
                 help="Continue this interrupted run directory from its checkpoints/last, with its own config."),
    click.option("--out", type=click.Path(file_okay=False), default=None,
                 help="Run directory to create (default: runs/<command>-<timestamp>)."),
    click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout."),
    click.option("--progress/--no-progress", default=True, help="Show a progress bar."),
]

PREF_WHAT = ("Trains --init on preference data of the task (--pairs offline: the correct answer against a plausible "
             "mistake; on_policy: the initial policy's best against its worst sample; or a JSONL file in TRL's "
             "format, saved back as pairs.jsonl in the run directory) and reports greedy accuracy before/after on "
             "every task (the alignment tax), the implicit rewards")
RUN_WHAT = {
    "sft": "Instruction-tunes --init on chat-format examples of every task (loss on the answer and eos only: the "
           "recipe of the shipped sft model) and reports greedy accuracy before/after on every task",
    "dpo": PREF_WHAT, "ipo": PREF_WHAT, "simpo": PREF_WHAT, "orpo": PREF_WHAT,
    "kto": PREF_WHAT.replace("preference data", "unpaired examples (each pair's chosen desirable, its rejected "
                                                "undesirable)"),
    "rft": "Samples --init on the task, keeps its verified-correct answers (--pairs on_policy; offline: the task's "
           "correct answers, plain SFT) and fine-tunes on them, and reports greedy accuracy before/after on every task",
    "rm": "Trains a Bradley-Terry reward model (a scalar head on the last token of --init) on preference pairs and "
          "reports its pairwise accuracy on held-out pairs before/after; use it in any RL run with --reward rm:DIR, "
          "where DIR is its checkpoints/final",
}
RUN_DETAILS = """{what}, and the update's sparsity and rank beside the paper's. Defaults are
the algorithm's preset (minirl/presets/{name}.toml); --config FILE overrides
them, and typed options override both. Every run directory holds config.toml
(the resolved config: --config DIR/config.toml reruns it), metrics.jsonl,
checkpoints/ and report.json; `minirl report DIR` re-renders it, and --resume
DIR continues an interrupted run (Ctrl-C, or a kill between
--checkpoint-every saves)."""
RL_WHAT = ("Trains --init on the task's verifier reward and reports greedy accuracy before/after on every task "
           "(the trained one, and the others: the alignment tax), the KL to the reference")


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


@main.group()
def run():
    """Fine-tune a model: sft; RL (grpo, ppo, reinforce, rloo); preferences (dpo, ipo, kto, simpo, orpo, rft); a
    reward model (rm)."""


def _register_commands():
    from minirl.rl import algorithms

    _job_command(main, "pretrain", "Pretrain a base model from scratch on the raw-text mixture of every task.",
                 "Defaults are the preset the shipped base model was made with (minirl/presets/pretrain.toml).",
                 exclude=("vocab_size", "value_head", "reward_head"))
    for name, (config_cls, algo_cls) in algorithms().items():
        _job_command(run, name, (algo_cls.__doc__ or name.upper()).strip().splitlines()[0],
                     RUN_DETAILS.format(what=RUN_WHAT.get(name, RL_WHAT), name=name))


_register_commands()


@main.command()
@click.argument("run_dir", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print report.json instead of rendering it.")
@click.option("--brief", is_flag=True, help="Skip the per-matrix tables.")
@click.option("--beside", type=click.Path(exists=True, file_okay=False), default=None,
              help="TRL output only: a minirl run directory of the same config, shown in a second column.")
@click.option("--bench-n", type=click.IntRange(min=1), default=None,
              help="TRL output only: held-out problems per task (default: 1000 on the trained task, 200 on the "
                   "others, as runs measure).")
def report(run_dir, as_json, brief, beside, bench_n):
    """Re-render the report of a finished run directory, or report a TRL output directory.

    \b
    RUN_DIR is a minirl run directory (report.json), or the directory train.py of `minirl export --format trl`
    saved (log_history.json): its recipe, TRL's curves, greedy accuracy of the init and the result on every task,
    and the update's sparsity and rank; measured once, cached as minirl_report.json.
    Example: minirl report runs/g10-trl/output --beside runs/g10
    """
    from minirl.export.trl_report import is_trl_output
    from minirl.report import load_report, render

    if is_trl_output(run_dir):
        return _report_trl(run_dir, beside, bench_n, as_json, brief)
    if beside or bench_n:
        raise click.UsageError(f"--beside and --bench-n are for a TRL output directory (log_history.json); "
                               f"{run_dir} is not one")
    try:
        r = load_report(run_dir)
    except FileNotFoundError as e:
        raise click.BadParameter(f"{e}; nor is it a TRL output directory (log_history.json, which train.py of "
                                 "`minirl export --format trl` writes)", param_hint="RUN_DIR") from None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="RUN_DIR") from None
    if as_json:
        click.echo(json.dumps(r, indent=2))
    elif "accuracy_raw" not in r and "trained_tasks" not in r:
        raise click.BadParameter(f"{run_dir}: report.json was written by an older minirl (it has no "
                                 "'trained_tasks'); --json prints it as it is", param_hint="RUN_DIR")
    else:
        render(r, detail=not brief)


def _report_trl(out, beside, bench_n, as_json, brief) -> None:
    """`minirl report OUT` of a TRL output directory, with --beside RUN_DIR's numbers."""
    from minirl.checkpoint import CheckpointError
    from minirl.export import trl_report
    from minirl.report import render_trl

    try:
        r = trl_report.trl_report(out, bench_n=bench_n)
    except (FileNotFoundError, CheckpointError) as e:
        raise click.BadParameter(str(e), param_hint="RUN_DIR") from None
    if beside:
        try:
            r["beside"] = trl_report.beside(beside)
        except (FileNotFoundError, ValueError) as e:
            raise click.BadParameter(str(e), param_hint="--beside") from None
    _emit(r, as_json, lambda r: render_trl(r, detail=not brief))


# ----------------------------------------------------------------- reproduce
@main.group()
def reproduce():
    """Reproduce a paper's claims at toy scale, each with minirl's numbers beside the paper's and a verdict."""


def _reproduce_config(cls, quick: bool, workers: int, **given):
    """`cls(**given)` without the options left at None (the config's defaults), as a usage error when bad."""
    try:
        return cls(**{k: v for k, v in given.items() if v is not None}, quick=quick, workers=workers)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def _reproduce_run(kind: str, run_fn, config, out, as_json: bool, render, files: tuple[str, ...]) -> None:
    """Run a `reproduce` experiment into `out` (default runs/reproduce-KIND-<time>) with progress lines, then print
    its JSON file (the first of `files`) or render its result and name the files it wrote."""
    from datetime import datetime
    from pathlib import Path

    out = Path(out) if out else Path("runs") / f"reproduce-{kind}-{datetime.now():%Y%m%d-%H%M%S}"
    result = run_fn(config, out, progress=None if as_json else lambda line: console.print(line))
    if as_json:
        click.echo((out / files[0]).read_text())
        return
    render(result)
    console.print("results: " + ", ".join(str(out / f) for f in files if (out / f).is_file()))


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@reproduce.command("perl")
@click.option("--quick", is_flag=True, help="A smoke test (12 steps a run, one seed, ranks 1 and 8): what CI runs; "
                                            "its numbers mean nothing.")
@click.option("--seeds", default=None, help="Comma-separated seeds of every quality run [default: 0,1,2; quick: 0].")
@click.option("--ranks", default=None, help="Comma-separated LoRA ranks [default: 1,4,8,16,32; quick: 1,8].")
@click.option("--jobs", "jobs", default="rm,reinforce,ppo", show_default=True,
              help="What to train: rm (reward model), reinforce, ppo.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1),
              help="Quality runs at once; the cost measurements run one at a time.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Directory for the runs and perl.json [default: runs/reproduce-perl-<time>].")
@click.option("--json", "as_json", is_flag=True, help="Print perl.json on stdout.")
def reproduce_perl(quick, seeds, ranks, jobs, workers, out, as_json):
    """PERL (arXiv 2403.10704): LoRA at ranks 1-32 against full tuning, for the reward model and for RL.

    \b
    For each rank and full tuning, over the seeds: the reward model's held-out pairwise accuracy, and REINFORCE's
    and PPO's gain on add (verifier reward); then, each job alone in a fresh process, the peak memory of a training
    step (tracemalloc: weights, gradients, optimizer state, activations) and its time. Prints PERL's claims
    (quality on par; reward model 43-74 % of full tuning's memory and 1.4-1.9x faster; RL 73-80 % and
    1.15-1.3x) beside minirl's, with a verdict each. The full run took 26 minutes on two cores.
    """
    from minirl.experiments.perl import QUICK_RANKS, QUICK_SEEDS, PerlConfig, run_perl
    from minirl.report import render_perl

    config = _reproduce_config(PerlConfig, quick, workers,
                               ranks=_int_list(ranks) if ranks else (QUICK_RANKS if quick else None),
                               seeds=_int_list(seeds) if seeds else (QUICK_SEEDS if quick else None),
                               jobs=tuple(j.strip() for j in jobs.split(",") if j.strip()))
    _reproduce_run("perl", run_perl, config, out, as_json, render_perl, ("perl.json",))


@reproduce.command("sparsity")
@click.option("--quick", is_flag=True, help="A smoke test (12 steps a run, 20 problems a task, seeds 0 and 1): what "
                                            "CI runs; its numbers mean nothing.")
@click.option("--seeds", default=None, help="Comma-separated seeds, at least two [default: 0,1,2; quick: 0,1].")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Runs at once.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Directory for the runs, report.json, report.md and the figures "
                   "[default: runs/reproduce-sparsity-<time>].")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout.")
def reproduce_sparsity(quick, seeds, workers, out, as_json):
    """RL fine-tunes small subnetworks (arXiv 2505.11711): each claim of paper 1 as an experiment with a verdict.

    \b
    From the shipped SFT model, over the seeds: every algorithm's preset (GRPO, PPO, REINFORCE, RLOO, DPO, KTO,
    SimPO, ORPO, RFT), SFT on the same task at the same lr and steps, offline-pair DPO, GRPO with a KL penalty,
    with fp32 weights, and with its gradients masked to the weights its first run updated. Measures update
    sparsity (bf16, tol 1e-5), layers and norms, rank, overlap across seeds/data/algorithms against chance,
    subnetwork agreement, sparsity between consecutive checkpoints and bf16 against fp32; prints each claim
    beside the paper's number with a verdict, and writes report.md with figures.
    Rerun with the same --out after an interruption: finished runs are read back.
    """
    from minirl.experiments.sparsity import QUICK_SEEDS, SparsityConfig, run_sparsity
    from minirl.report import render_claims

    config = _reproduce_config(SparsityConfig, quick, workers,
                               seeds=_int_list(seeds) if seeds else (QUICK_SEEDS if quick else None))
    title = "Paper 1's claims (Mukherjee et al. 2025, arXiv 2505.11711) beside minirl"
    _reproduce_run("sparsity", run_sparsity, config, out, as_json,
                   lambda result: render_claims(result.claims, title, quick=quick),
                   ("report.json", "report.md", "sparsity.png", "overlap.png", "dynamics.png"))


@reproduce.command("regime")
@click.option("--quick", is_flag=True, help="A smoke test (8-step runs, 20 problems a task, seed 0): what CI runs; "
                                            "its numbers mean nothing.")
@click.option("--seeds", default=None, help="Comma-separated seeds [default: 0,1,2; quick: 0].")
@click.option("--points", default=None, help="Comma-separated grid points [default: all: " + ", ".join(REGIME_POINTS)
              + "; quick: every knob and two widths].")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Runs at once.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Directory for the runs, regime.json and regime.png [default: runs/reproduce-regime-<time>].")
@click.option("--json", "as_json", is_flag=True, help="Print regime.json on stdout.")
def reproduce_regime(quick, seeds, points, workers, out, as_json):
    """The regime map: update sparsity and gain of GRPO against lr / rms(w), steps, Adam's eps, precision and width.

    \b
    Answers: does a toy run exist that gains >= 10 points on add and is >= 50 % sparse (bf16, tol 1e-5)?
    The width axis (points w32_*, w96_*, w128_*: the shipped SFT models of those widths) trains each width at the
    four learning rates and with the paper preset, and fits the weights' RMS and the sparsity against log2(width),
    carried to width 4096 as a trend, with the half-ULP predictor applied there.
    Rerun with the same --out after an interruption: finished runs are read back.
    """
    from minirl.experiments.regime import QUICK_POINTS, RegimeConfig, run_regime
    from minirl.report import render_regime

    config = _reproduce_config(RegimeConfig, quick, workers,
                               seeds=_int_list(seeds) if seeds else ((0,) if quick else None),
                               points=tuple(p.strip() for p in points.split(",") if p.strip()) if points else
                               (QUICK_POINTS if quick else None))
    _reproduce_run("regime", run_regime, config, out, as_json, render_regime, ("regime.json", "regime.png", "widths.png"))


def _float_list(text: str, param: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=param) from None


@reproduce.command("merging")
@click.option("--quick", is_flag=True, help="A smoke test (12 steps a run, 20 problems a task, one seed, one offline "
                                            "point per method, one sweep point each): what CI runs; its numbers mean "
                                            "nothing.")
@click.option("--seeds", default=None, help="Comma-separated seeds [default: 0,1,2; quick: 0].")
@click.option("--algorithms", default="dpo,grpo", show_default=True, help="dpo (the paper's setting), grpo.")
@click.option("--methods", default=None,
              help="Comma-separated training variants [default: all: " + ", ".join(MERGING_METHODS) + "].")
@click.option("--weights", default=None, help="Offline merges: the policy's weights [default: 0.1,0.3,0.5,0.7,0.9].")
@click.option("--densities", default=None, help="Offline DARE and TIES densities [default: 0.3,0.5,0.7].")
@click.option("--reserve-rates", default=None,
              help="The p sweep on DPO, 'none' to skip [default: 1,0.3,0.03,0.01,1e-3,5e-4].")
@click.option("--alphas", default=None, help="The alpha sweep on DPO, 'none' to skip [default: 0,1e-5,1e-4,1e-3,1e-2].")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Runs at once.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Directory for the runs, merging.json and the figures [default: runs/reproduce-merging-<time>].")
@click.option("--json", "as_json", is_flag=True, help="Print merging.json on stdout.")
def reproduce_merging(quick, seeds, algorithms, methods, weights, densities, reserve_rates, alphas, workers, out,
                      as_json):
    """Online merging (arXiv 2405.17931): OnDARE and OnTIES against AdamW, regularisers and offline merges.

    \b
    From the shipped SFT model, DPO and GRPO each train with AdamW (at 1x, 0.3x, 0.1x the preset's lr), OnDARE,
    OnTIES, step-K, EMA, ChildTuning, a doubled KL and LoRA over the seeds; each seed's AdamW policy is merged
    offline with the SFT model (linear, DARE, TIES over the paper's grid); on DPO the reserve rate p and alpha
    are swept. Reward = gain on the trained task, tax = mean drop on the other five. Prints the reward-tax table
    beside the paper's Table 4, the verdicts, and draws pareto.png and sweeps.png (with matplotlib).
    Rerun with the same --out after an interruption: finished runs are read back.
    """
    from minirl.experiments.merging import QUICK, MergingConfig, run_merging
    from minirl.report import render_merging

    def sweep(text, param):
        return () if text.strip().lower() == "none" else _float_list(text, param)

    def chosen(value, parse, key):
        return parse(value) if value else (QUICK[key] if quick else None)

    config = _reproduce_config(
        MergingConfig, quick, workers,
        seeds=chosen(seeds, _int_list, "seeds"),
        algorithms=tuple(a.strip() for a in algorithms.split(",") if a.strip()),
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()) if methods else None,
        weights=chosen(weights, lambda t: _float_list(t, "--weights"), "weights"),
        densities=chosen(densities, lambda t: _float_list(t, "--densities"), "densities"),
        reserve_rates=chosen(reserve_rates, lambda t: sweep(t, "--reserve-rates"), "reserve_rates"),
        alphas=chosen(alphas, lambda t: sweep(t, "--alphas"), "alphas"))
    _reproduce_run("merging", run_merging, config, out, as_json, render_merging,
                   ("merging.json", "pareto.png", "sweeps.png"))


@main.command()
@click.argument("checkpoints", nargs=-1, required=True, metavar="A B [C ...]")
@click.option("--tol", default=1e-5, show_default=True, type=click.FloatRange(min=0),
              help="Absolute tolerance of 'unchanged' (|Δ| <= tol) for the per-matrix tables and the overlap; the "
                   "summary also shows 1e-8, 1e-7, 1e-6, 1e-5 and bitwise.")
@click.option("--dtype", type=click.Choice(["bf16", "fp32"]), default="bf16", show_default=True,
              help="Precision the weights and Δ are compared in: bf16 (the papers' lens and the official checker's "
                   "default) or fp32 (what the follow-ups call dense).")
@click.option("--rank", "with_rank", is_flag=True,
              help="Also the update rank of every matrix (an SVD each: slow for large models; a progress bar shows it).")
@click.option("--ignore", "ignore", multiple=True,
              help="Tensor names to leave out (repeat or comma-separate); minirl's value_head.weight and "
                   "score.weight are always left out.")
@click.option("--brief", is_flag=True, help="Skip the per-tensor table (the layer × matrix tables stay).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def analyze(checkpoints, tol, dtype, with_rank, ignore, brief, as_json):
    """Update sparsity, rank and overlap between checkpoints: A is θ0, B, C, ... were fine-tuned from it.

    \b
    Each of A, B, C is a shipped name (base, sft), a minirl checkpoint or run directory, a Hugging Face directory
    (model.safetensors, or sharded with model.safetensors.index.json; bf16, fp16 or fp32) or a .safetensors file.
    Tensors are streamed one at a time, so two 7B checkpoints need memory for about two tensors, not a model.
    A LoRA checkpoint is loaded whole and its adapters merged in memory (fine for minirl's small models; the rank
    of its θ1 − θ0 then includes the rounding of W + ΔW: a LoRA run's own report has the exact rank).
    For each update θi − θ0: sparsity 1 − ||Δ||_0 / n at 1e-8 .. 1e-5 and bitwise, overall, per tensor and per
    layer × matrix, as the official checker (SagnikMukherjee/sparsity_in_rl) defines it; with --rank the rank
    fraction of each matrix; with three checkpoints or more, the overlap o1, o2 and Jaccard of each pair of
    updates beside chance (independent masks of the same densities).
    Example: minirl analyze base sft; minirl analyze sft runs/grpo-seed0 runs/grpo-seed1 --rank
    """
    from minirl.analysis.compare import analyze_checkpoints
    from minirl.analysis.sources import open_source
    from minirl.checkpoint import CheckpointError
    from minirl.runs import IGNORED_IN_ANALYSIS

    if len(checkpoints) < 2:
        raise click.UsageError("give at least two checkpoints: A (θ0) and B fine-tuned from it")
    sources = []
    for i, name in enumerate(checkpoints):
        try:
            sources.append(open_source(name))
        except (FileNotFoundError, CheckpointError) as e:
            raise click.BadParameter(str(e), param_hint="A" if i == 0 else "B/C") from None
    ignored = set(IGNORED_IN_ANALYSIS) | set(_split_values(ignore))

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bar:
        tasks = {}

        def progress(stage, done, total, name):
            if stage not in tasks:
                tasks[stage] = bar.add_task("rank SVDs" if stage == "rank" else "tensors", total=total)
            bar.update(tasks[stage], completed=done, description=f"{'rank SVD' if stage == 'rank' else 'tensor'} "
                                                                  f"{name}")

        try:
            result = analyze_checkpoints(*sources, tol=tol, dtype=dtype, rank=with_rank, ignore=ignored,
                                         progress=progress)
        except ValueError as e:  # names or shapes that do not match, an unreadable tensor
            hint = " (--ignore NAME leaves a tensor out)" if "tensor names" in str(e) or "only in" in str(e) else ""
            raise click.UsageError(f"{e}{hint}") from None
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        from minirl.report import render_analysis

        render_analysis(result, detail=not brief)


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
    from minirl.report import accuracy_table
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
          lambda r: Console().print(accuracy_table(r["accuracy"], f"{ckpt} ({prompt_format} prompts, n={n})")))


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
@click.option("--format", "fmt", type=click.Choice(["torch", "hf", "peft", "trl"]), required=True,
              help="torch: a PyTorch nn.Module + state_dict; hf: a LlamaForCausalLM directory (a reward model: "
                   "LlamaForSequenceClassification; a LoRA model: its adapters merged); peft: a LoRA run's "
                   "adapters as a PEFT adapter directory (load it onto the base exported with --format hf); "
                   "trl: CKPT is a run directory or a run's config TOML, and OUT the same recipe for TRL (model, data, "
                   "reward.py, config, train.py for python or accelerate launch).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to write.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="Weight dtype of the hf export.")
@click.option("--model", "model_name", default=None,
              help="trl only: a Hugging Face model name or path the recipe trains instead of the run's init model.")
def export(ckpt, fmt, out, dtype, model_name):
    """Export CKPT (a shipped name, a checkpoint or a run directory) for PyTorch, Hugging Face, PEFT or TRL."""
    from minirl.lora import lora_layers, plain_model

    if fmt == "trl":
        from rich.markup import escape

        from minirl.export.trl import export_trl, mapping_table

        try:
            path, rows, spec = export_trl(ckpt, out, model=model_name)
        except (ValueError, FileNotFoundError, FileExistsError) as e:
            raise click.UsageError(str(e)) from None
        console.print(mapping_table(spec, rows))
        for r in rows:
            if r.warning:
                console.print(f"[yellow]warning:[/] {escape(r.minirl)}: {escape(r.reason)}")
        console.print(f"wrote trl export to [bold]{path}[/]: `python train.py` there (README.md, MAPPING.md)")
        return
    if model_name is not None:
        raise click.BadParameter("--model is for --format trl", param_hint="--model")

    model = _load_or_fail(ckpt)
    lora = bool(lora_layers(model))
    if fmt == "peft" and not lora:
        raise click.BadParameter(f"{ckpt} has no LoRA adapters (train with --lora-rank R to get some)",
                                 param_hint="CKPT")
    try:
        if fmt == "peft":
            from minirl.export.peft import export_peft

            path = export_peft(model, out, base_name_or_path=getattr(model, "lora_base", None))
        elif fmt == "torch":
            from minirl.export.torch import export_torch

            path = export_torch(plain_model(model, merged=True) if lora else model, out)
        else:
            from minirl.export.hf import export_hf

            path = export_hf(plain_model(model, merged=True) if lora else model, out, dtype=dtype)
    except ImportError as e:
        raise click.UsageError(str(e)) from None
    console.print(f"wrote {fmt} export to [bold]{path or out}[/]")


# --------------------------------------------------------------------- merge
def _split_values(values: tuple[str, ...]) -> list[str]:
    """A repeatable option whose values may also be comma-separated: ("a,b", "c") -> ["a", "b", "c"]."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _merge_source(name: str, param: str):
    """What `merge` reads for one model: a streamed path, or a LoRA/HF model's state dict; and its config."""
    from pathlib import Path

    from minirl.checkpoint import CheckpointError
    from minirl.loading import load, resolve

    try:
        path = resolve(name)
        config_file = path / "config.json" if path.is_dir() else Path(path).parent / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        if "lora" in config:  # adapters only on disk: fold them into the weights of the model they adapt
            from minirl.lora import merged_state_dict

            model = load(name, merge_lora=True)
            return merged_state_dict(model), model.checkpoint_config()
        if "model" not in config and "architectures" in config:  # a Hugging Face directory
            from minirl.export.hf import load_hf

            return path, load_hf(path).checkpoint_config()
        if "model" not in config:
            raise CheckpointError(f"{path}: config.json has no 'model' section; not a minirl checkpoint")
        return path, config
    except (FileNotFoundError, CheckpointError, ValueError, KeyError) as e:
        raise click.BadParameter(f"{name}: {e}", param_hint=param) from None


@main.command()
@click.option("--base", required=True, help="The model the others were fine-tuned from (task vectors are taken "
                                            "against it): a shipped name, a checkpoint, a run or a HF directory.")
@click.option("--models", "models", multiple=True, required=True,
              help="Models to merge, as --base; repeat the option or separate with commas (--models a,b).")
@click.option("--weights", "weights", multiple=True,
              help="One weight per model, in --models order; repeat or comma-separate [default: 1 each].")
@click.option("--method", type=click.Choice(["linear", "dare_linear", "ties", "dare_ties"]), default="ties",
              show_default=True, help="linear: Σ w_i θ_i / Σ w_i; dare_linear: random drop + 1/d rescale of each "
                                      "task vector, then θ_base + Σ w_i δ_i; ties: top-d magnitudes, sign "
                                      "election, mean of the agreeing entries; dare_ties: DARE's drop, then TIES.")
@click.option("--density", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Fraction of each task vector kept (TIES: the largest magnitudes; DARE: at random).")
@click.option("--normalize/--no-normalize", default=None,
              help="Divide by the weights (TIES: those that contributed) [default: mergekit's: on for linear and "
                   "ties, off for dare_linear and dare_ties].")
@click.option("--rescale", type=click.Choice(["inverse_density", "l1"]), default="inverse_density", show_default=True,
              help="DARE's rescale of the kept entries: 1/d (the paper), or keep the L1 norm (mergekit 0.1).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of DARE's masks.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="Weight dtype of the merged checkpoint (fp32 keeps the merge exact).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Checkpoint directory to write.")
def merge(base, models, weights, method, density, normalize, rescale, seed, dtype, out):
    """Merge fine-tuned models offline (mergekit's linear, DARE, TIES) into a minirl checkpoint.

    \b
    The result takes the base's config and tokenizer and works with `minirl eval OUT`, `minirl export OUT`.
    Example: minirl merge --base base --models sft,runs/grpo --weights 0.5,0.5 --method ties --density 0.5 --out m
    """
    from minirl.checkpoint import CheckpointError, save_checkpoint
    from minirl.merging import merge as merge_models

    names = _split_values(models)
    if not names:
        raise click.BadParameter("give at least one model", param_hint="--models")
    try:
        w = [float(x) for x in _split_values(weights)] if weights else [1.0] * len(names)
    except ValueError:
        raise click.BadParameter(f"expected numbers, got {', '.join(weights)}", param_hint="--weights") from None
    if len(w) != len(names):
        raise click.BadParameter(f"{len(w)} weights for {len(names)} models; give one weight per model",
                                 param_hint="--weights")
    if method == "linear" and normalize is not False and sum(w) == 0:
        raise click.BadParameter("the weights sum to 0; a normalized linear merge divides by their sum",
                                 param_hint="--weights")
    base_source, config = _merge_source(base, "--base")
    sources = [_merge_source(name, "--models")[0] for name in names]
    try:
        tensors = merge_models(base_source, sources, w, method, density, seed, normalize, rescale)
    except (ValueError, CheckpointError) as e:
        raise click.BadParameter(str(e), param_hint="--models") from None
    config = {**config, "merge": {"method": method, "base": base, "models": names, "weights": w, "density": density,
                                  "normalize": normalize, "rescale": rescale, "seed": seed}}
    path = save_checkpoint(out, tensors, config, dtype)
    console.print(f"merged {len(names)} model(s) into {base} with {method} (density {density}): "
                  f"{len(tensors)} tensors written to [bold]{path}[/]")


if __name__ == "__main__":
    main()
