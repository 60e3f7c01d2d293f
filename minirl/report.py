"""Render a run's report.json in the terminal with rich (and the accuracy tables of `minirl eval`).

Every number shown is read from report.json, which the run measured; the
paper's numbers come from the report's `paper` section (quoted from
docs/PAPERS.md). `minirl report DIR` re-renders a finished run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from minirl.analysis import LAYER_COLUMNS, cell_of
from minirl.tasks import TASKS

SPARK = "▁▂▃▄▅▆▇█"
SHORT = {"input_norm": "norm1", "post_norm": "norm2"}
"""Column labels of the two RMSNorm gains of a layer (input_layernorm, post_attention_layernorm)."""


def sparkline(values: list[float], width: int = 60) -> str:
    """A one-line chart of `values` (averaged into at most `width` buckets)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return ""
    step = max(1, math.ceil(len(vals) / width))
    buckets = [sum(vals[i:i + step]) / len(vals[i:i + step]) for i in range(0, len(vals), step)]
    lo, hi = min(buckets), max(buckets)
    span = hi - lo or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((b - lo) / span * (len(SPARK) - 1) + 0.5))] for b in buckets)


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f} %"


def load_report(path) -> dict:
    """report.json of a run directory (or the file itself)."""
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"no report.json in {path} (did the run finish? `--resume {path}` continues it)")
    try:
        return json.loads(file.read_text())
    except ValueError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None


def _accuracy_table(r: dict) -> Table:
    """Greedy accuracy before/after on every task: the trained ones, then the others (the alignment tax).

    A reward model's report holds its pairwise accuracy on held-out pairs instead (metric "pairwise").
    """
    pairwise = r["accuracy"].get("metric") == "pairwise"
    title = ("reward model: pairwise accuracy on held-out pairs (chosen scored above rejected)" if pairwise
             else "greedy accuracy on the held-out benchmark")
    t = Table(title=title, title_justify="left")
    for col, j in (("task", "left"), ("pairs" if pairwise else "problems", "right"), ("before", "right"), ("after", "right"),
                   ("change", "right")):
        t.add_column(col, justify=j)
    before, after, trained = r["accuracy"]["before"], r["accuracy"]["after"], r["trained_tasks"]
    n = r["accuracy"].get("n", {})
    order = list(TASKS)  # report.json sorts its keys: show the tasks in the registry's order again
    for task in sorted(before, key=lambda t: (t not in trained, order.index(t) if t in order else len(order))):
        d = after[task] - before[task]
        if task in trained:
            label, color = f"[bold]{task}[/] (trained)", "green" if d > 0 else "red"
        else:
            label, color = f"{task} (alignment tax)", "red" if d < -0.02 else "green" if d > 0.02 else "white"
        t.add_row(label, str(n.get(task, "")), pct(before[task]), pct(after[task]), f"[{color}]{100 * d:+.1f} pts[/]")
    return t


def accuracy_table(scores: dict, title: str) -> Table:
    """One accuracy column per task (`minirl eval`, pretraining's raw-prompt accuracy)."""
    table = Table(title=title)
    table.add_column("task")
    table.add_column("accuracy", justify="right")
    for task, acc in scores.items():
        table.add_row(task, pct(acc))
    return table


def _grid_table(per_tensor: dict, title: str) -> Table:
    """Layer × matrix grid of a per-tensor fraction (percent), other tensors below."""
    grid, other = {}, {}
    for name, v in per_tensor.items():
        layer, col = cell_of(name)
        if layer is None:
            other[col] = v
        else:
            grid.setdefault(layer, {})[col] = v
    cols = [c for c in LAYER_COLUMNS if any(c in row for row in grid.values())]
    t = Table(title=title + ", %", title_justify="left", padding=(0, 1))
    t.add_column("layer")
    for c in cols:
        t.add_column(SHORT.get(c, c), justify="right")
    for layer in sorted(grid):
        t.add_row(str(layer), *[f"{100 * grid[layer][c]:.1f}" if c in grid[layer] else "" for c in cols])
    for name, v in other.items():
        t.add_row(name, f"{100 * v:.1f}", *[""] * (len(cols) - 1))
    return t


def _range(lo_hi) -> str:
    return f"{lo_hi[0]} % to {lo_hi[1]} %"


def _paper_table(r: dict) -> Table:
    paper, sp, rk = r["paper"], r["sparsity"], r["rank"]
    t = Table(title=f"paper (Mukherjee et al. 2025, arXiv {paper['arxiv']}) beside minirl", title_justify="left")
    for col in ("quantity", "paper", "minirl (this run)"):
        t.add_column(col)
    if r["algorithm"] == "sft":
        t.add_row("SFT update sparsity (bf16, tol 1e-5): dense", _range(paper["sft_range"]), pct(sp["overall"]))
    else:
        t.add_row("RL update sparsity (bf16, tol 1e-5)", _range(paper["table1_range"]) + " (Table 1)",
                  pct(sp["overall"]))
    row = paper.get("table1_row")
    if row:  # the paper's row for the same algorithm (REINFORCE and RLOO are not in its Table 1)
        t.add_row(f"  {row['algorithm'].upper()}, {row.get('model', 'Table 1')}", f"{row['sparsity']} %",
                  pct(sp["overall"]))
    dist = paper.get("data_distribution")
    if dist and r.get("preference") and r["algorithm"] in ("dpo", "rft"):
        ind, ood = dist["in_distribution"], dist["out_of_distribution"]
        if r["algorithm"] == "dpo":
            ref = f"on-policy {ind['dpo']} % / off-policy {ood['dpo'][0]} %, {ood['dpo'][1]} %"
        else:
            ref = f"RFT {ind['rejection_sampling_sft']} % / SFT {ood['sft']} %"
        t.add_row(f"  in- vs out-of-distribution data (this run: {r['preference']['data']['source']})", ref,
                  pct(sp["overall"]))
    if r["algorithm"] == "grpo":
        kl = paper["kl"]
        beta = r.get("config", {}).get("grpo", {}).get("beta")
        t.add_row("  GRPO with / without a KL penalty", f"{kl['grpo_with_kl']} % / {kl['grpo_without_kl']} %",
                  f"{pct(sp['overall'])} (beta {beta})")
    t.add_row("  bitwise (Path Not Taken's rule)", "-", pct(sp["bitwise"]))
    if r.get("precision") == "fp32":
        t.add_row("  fp32 storage, exact equality", "dense ('infinite precision', footnote 5)", pct(sp["fp32_exact"]))
    t.add_row("update rank (mean fraction of full)", _range(paper["rank_range"]) + " of full", pct(rk["mean_fraction"]))
    reg = r.get("regime", {})
    if reg:
        ref = paper["relative_step"]
        t.add_row("relative step lr / rms(w)", f"~{ref:.0e} (scale matching)",
                  f"{reg['lr_over_rms']:.2e} ({reg['lr_over_rms'] / ref:.0f}x the papers'; "
                  f"{'sparse' if sp['overall'] >= 0.5 else 'dense'} regime here: {pct(sp['overall'])} unchanged)")
    if "merge_ratio" in reg:  # online merging (paper 2): what α does is this ratio, not α itself
        ref = paper.get("merge_ratio", 1e-4)
        t.add_row("merge pull α·rms(τ_r) / rms(AdamW step)", f"~{ref:.0e} (paper 2: α 1e-7 at lr 1e-6)",
                  f"{reg['merge_ratio']:.2e} at α {reg['merge_weight']:g} ({reg['merge_ratio'] / ref:.2g}x)")
    return t


def _curve_line(r: dict, name: str | None = None, label: str | None = None) -> str:
    """A curve as a sparkline with the means of its first and last tenth (default: RL's reward, else the loss)."""
    curves = r.get("curves", {})
    name = name or ("reward" if "reward" in curves else "loss")
    finite = [v for v in curves.get(name, []) if v is not None and math.isfinite(v)]
    if not finite:
        return f"no {name} logged"
    tenth = max(1, len(finite) // 10)
    return (f"{label or name} per step {sparkline(finite, 40)}  first tenth {sum(finite[:tenth]) / tenth:.2f} → "
            f"last tenth {sum(finite[-tenth:]) / tenth:.2f}")


def _preference_lines(r: dict) -> list[str]:
    """The preference data (source, size, how often the verifier accepts chosen and rejected) and the end stats."""
    pref = r.get("preference")
    if not pref:
        return []
    d = pref["data"]
    if "pairs" in d:
        data = (f"data: {d['pairs']} {d['source']} pairs of {d['task']}; the verifier accepts {pct(d['chosen_correct'])}"
                f" of chosen, {pct(d['rejected_correct'])} of rejected")
    else:
        data = (f"data: {d['examples']} {d['source']} examples of {d['task']} ({d['desirable']} desirable); the "
                f"verifier accepts {pct(d['desirable_correct'])} of the desirable ones")
    lines = [data]
    if d.get("built_at_step", 0) > 0:
        lines.append(f"  (the last data set, rebuilt from the policy at step {d['built_at_step']})")
    final = pref.get("final", {})
    if final:
        lines.append("last tenth of training: " + ", ".join(f"{k} {v:.3f}" for k, v in final.items()))
    for name, label in (("rewards/accuracies", "implicit reward accuracy"), ("rewards/margins", "implicit margin")):
        if name in r.get("curves", {}):
            lines.append(_curve_line(r, name, label))
    return lines


def render(r: dict, console: Console | None = None, detail: bool = True) -> None:
    """Print the whole report of a run (pretraining: its raw-prompt accuracy)."""
    console = console or Console()
    if "accuracy_raw" in r:
        render_accuracy_report(r, console)
        return
    head = (f"[bold]minirl {r['command']}[/] · trained [bold]{', '.join(r['trained_tasks'])}[/] · init {r['init']} · "
            f"seed {r['seed']} · {r['steps']} steps · precision {r['precision']} · {r['wall_seconds']:.1f} s training"
            + (" · [yellow]interrupted[/]" if r.get("interrupted") else ""))
    lines = [head, _curve_line(r)]
    if "rm_score" in r.get("curves", {}):  # trained on a reward model: its score beside the verifier's accuracy
        lines += [_curve_line(r, "rm_score", "reward model score"),
                  _curve_line(r, "accuracy", "verifier accuracy (sampled)")]
    lines += _preference_lines(r)
    if "lora" in r:
        lo = r["lora"]
        lines.append(f"LoRA r {lo['lora_rank']}, α {lo['lora_alpha']:g} on {', '.join(lo['lora_targets'])}: "
                     f"{lo['trainable']:,} trainable of {lo['total']:,} weights ({pct(lo['trainable'] / lo['total'])}); "
                     f"the update ΔW = (α/r)·BA of each adapted matrix has rank ≤ {lo['lora_rank']}, the others are "
                     "unchanged")
    sub = r.get("subnetwork")
    if sub:
        lines.append(f"subnetwork fine-tuning: gradients masked to the weights {sub['mask_from']} updated (from "
                     f"{sub['mask_init']}, tol {sub['mask_tol']}): {sub['trainable']:,} of {sub['masked_total']:,} "
                     f"trainable ({pct(sub['trainable_fraction'])})")
    if "kl" in r:
        kl = r["kl"]
        lines.append(f"KL(π ‖ π_ref) per sequence on {kl['n']} fresh samples: k1 {kl['k1']:.4f}, k3 {kl['k3']:.4f}")
    console.print(Panel(Group(*lines), title="minirl report", expand=False))
    console.print(_accuracy_table(r))
    sp = r["sparsity"]
    console.print(f"update sparsity: [bold]{pct(sp['overall'])}[/] of {sp['n_params']:,} weights unchanged "
                  f"(bf16, |Δ| <= {sp['tol']:g}); bitwise {pct(sp['bitwise'])}"
                  + (f"; fp32 exact {pct(sp['fp32_exact'])}" if r.get("precision") == "fp32" else ""))
    if detail:
        console.print(_grid_table(sp["per_tensor"], "update sparsity per matrix (bf16, tol 1e-5)"))
        console.print(_grid_table(r["rank"]["per_tensor"], "update rank per matrix (fraction of full rank)"))
    console.print(_paper_table(r))
    console.print(f"run directory: {r.get('run_dir', '?')}")


def render_accuracy_report(report: dict, console: Console | None = None) -> None:
    """Pretraining's report: raw-prompt accuracy per task, steps and time."""
    console = console or Console()
    console.print(accuracy_table(report["accuracy_raw"], f"{report['command']}: raw-prompt accuracy"))
    note = " (interrupted)" if report.get("interrupted") else ""
    console.print(f"{report['steps']} steps in {report['wall_seconds']:.1f} s{note}; checkpoint: {report['checkpoint']}")


def render_perl(result, console: Console | None = None) -> None:
    """`minirl reproduce perl`: quality and cost per rank, then each claim with the paper's number and a verdict."""
    from minirl.experiments.perl import summary

    console = console or Console()
    t = Table(title="PERL at toy scale: LoRA against full tuning (quality over seeds; cost of one step, alone)",
              title_justify="left")
    for col in ("job", "rank", "trainable", "quality: mean (min-max)", "tax", "reward", "peak MB", "memory vs full",
                "ms / step", "speed vs full"):
        t.add_column(col, justify="left" if col == "job" else "right")
    for r in summary(result):
        quality = f"{r['mean']:.1f} ({r['min']:.1f}-{r['max']:.1f})" + (" %" if r["job"] == "rm" else " pts")
        t.add_row(r["job"], str(r["rank"] or "full"), f"{r['trainable']:,}" if r["trainable"] else "",
                  quality, "" if r["job"] == "rm" else f"{r['tax']:+.1f}",
                  "" if r["reward"] is None else f"{r['reward']:.2f}",
                  f"{r['peak_mb']:.1f}" if r["peak_mb"] is not None else "",
                  f"{r['memory_pct']:.0f} %" if r["memory_pct"] is not None else "",
                  f"{1000 * r['step_seconds']:.0f}" if r["step_seconds"] is not None else "",
                  f"{r['speedup']:.2f}x" if r["speedup"] is not None else "")
    console.print(t)
    render_claims(result.verdicts, "PERL's claims (Sidahmed et al. 2024, arXiv 2403.10704) beside minirl", console,
                  quick=result.config.get("quick", False))


def render_claims(rows: list[dict], title: str, console: Console | None = None, quick: bool = False) -> None:
    """A `reproduce` command's claims: claim, the paper's number, minirl's, and the verdict in colour."""
    console = console or Console()
    if quick:
        console.print("[bold yellow]--quick: a smoke test of 12-step runs on 20 problems a task; these numbers and "
                      "verdicts mean nothing[/]")
    v = Table(title=title, title_justify="left")
    for col in ("claim", "paper", "minirl", "verdict"):
        v.add_column(col)
    colors = {"reproduced": "green", "partly": "yellow", "not reproduced": "red"}
    for row in rows:
        v.add_row(row["claim"], row["paper"], row["minirl"], f"[{colors[row['verdict']]}]{row['verdict']}[/]")
    console.print(v)


def render_merging(result, console: Console | None = None) -> None:
    """`minirl reproduce merging`: reward and tax of every method beside the paper's Table 4, the sweeps, the
    offline grid's best points, and each claim with a verdict."""
    from minirl.experiments.merging import label, points
    from minirl.papers import papers

    console = console or Console()
    table4 = papers()["merging"]["table4"]
    pts = points(result)
    for algorithm in result.config["algorithms"]:
        mine = [p for p in pts if p["algorithm"] == algorithm]
        t = Table(title=f"{algorithm}: reward and alignment tax over {mine[0]['seeds']} seed(s) from the SFT model, in "
                        "points ± standard error; average = every task's accuracy, the paper's benchmark average; "
                        "paper = Table 4, LLaMA-3-8B-Instruct: benchmark average / MT-Bench / AlpacaEval-LC",
                  title_justify="left")
        for col in ("method", "task %", "gain", "tax", "average %", "merge ratio", "paper"):
            t.add_column(col, justify="left" if col in ("method", "paper") else "right")
        main = [p for p in mine if p["family"] != "offline" and not p["sweep"]]
        offline = [p for p in mine if p["family"] == "offline"]
        best_offline = sorted(offline, key=lambda p: p["gain"] - p["tax"], reverse=True)[:3]
        for p in main + best_offline:
            row = table4.get(p["method"]) if p["family"] != "offline" else None
            t.add_row(label(p), f"{p['after']:.1f}", f"{p['gain']:+.1f} ± {p['gain_se']:.1f}",
                      f"{p['tax']:+.2f} ± {p['tax_se']:.2f}", f"{p['average']:.1f}",
                      "" if p["merge_ratio"] is None else f"{p['merge_ratio']:.1e}",
                      f"{row['benchmark_average']} / {row['mt_bench']} / {row['alpacaeval_lc']}" if row else "")
        console.print(t)
        if offline:
            console.print(f"  offline grid: {len(offline)} points, the best three by gain − tax shown; every point is "
                          "in merging.json and pareto.png")
        sweep = sorted((p for p in mine if p["sweep"]), key=lambda p: (p["sweep"][0], p["sweep"][1], p["sweep"][2]))
        if sweep:
            s = Table(title=f"{algorithm}: reserve rate p and alpha sweeps (the main runs: p 0.1, alpha 1e-6)",
                      title_justify="left")
            for col in ("sweep", "optimizer", "value", "gain", "tax", "merge ratio"):
                s.add_column(col, justify="left" if col in ("sweep", "optimizer") else "right")
            for p in sweep:
                kind, opt, value = p["sweep"]
                s.add_row(kind, opt, f"{value:g}", f"{p['gain']:+.1f} ± {p['gain_se']:.1f}", f"{p['tax']:+.2f}",
                          "" if p["merge_ratio"] is None else f"{p['merge_ratio']:.1e}")
            console.print(s)
    render_claims(result.verdicts, "Online merging's claims (Lu et al. 2024, arXiv 2405.17931) beside minirl",
                  console, quick=result.config.get("quick", False))
    console.print(f"{len(result.runs)} training runs and {len(result.offline)} offline merges in "
                  f"{result.wall_seconds / 60:.1f} min")


def render_analysis(result: dict, console: Console | None = None, detail: bool = True) -> None:
    """`minirl analyze`: the checkpoints, each update's sparsity at every tolerance and bitwise (and rank), the
    layer × matrix tables, the per-tensor table (detail) and, with two updates or more, their overlap beside chance."""
    console = console or Console()
    lens = f"{result['dtype']}, |Δ| <= {result['tol']:g}"
    # 1) what was compared
    t = Table(title=f"checkpoints: {result['n_tensors']} tensors, {result['n_params']:,} weights",
              title_justify="left")
    for col in ("", "checkpoint", "kind", "stored as"):
        t.add_column(col)
    for i, c in enumerate(result["checkpoints"]):
        stored = ", ".join(f"{d} ×{n}" for d, n in c.get("stored_dtypes", {}).items())
        t.add_row(f"θ{i}", c["name"], c.get("kind", ""), stored)
    console.print(t)
    if result.get("ignored"):
        console.print(f"left out: {', '.join(result['ignored'])}")
    # 2) each update's sparsity at every tolerance, bitwise, and its mean rank
    ranked = any("rank" in u for u in result["updates"])
    t = Table(title=f"update sparsity θi − θ0 in {result['dtype']} (% unchanged, the official checker's rule)",
              title_justify="left")
    t.add_column("update")
    tols = list(result["updates"][0]["sparsity"]["by_tol"])
    for tol in tols:
        t.add_column(f"tol {float(tol):g}", justify="right")
    t.add_column("bitwise", justify="right")
    if ranked:
        t.add_column("mean rank", justify="right")
    for i, u in enumerate(result["updates"], start=1):
        sp = u["sparsity"]
        cells = [pct(sp["by_tol"][tol], 2) for tol in tols] + [pct(sp["bitwise"], 2)]
        t.add_row(f"θ{i}", *cells, *([pct(u["rank"]["mean_fraction"])] if ranked else []))
    console.print(t)
    # 3) per update: layer × matrix grids, then (detail) every tensor
    shapes = result.get("shapes", {})
    for i, u in enumerate(result["updates"], start=1):
        sp, rk = u["sparsity"], u.get("rank")
        console.print(_grid_table(sp["per_tensor"], f"θ{i} − θ0: update sparsity per matrix ({lens})"))
        if rk:
            console.print(_grid_table(rk["per_tensor"], f"θ{i} − θ0: update rank per matrix (fraction of full)"))
        if detail:
            t = Table(title=f"θ{i} − θ0: per tensor", title_justify="left", padding=(0, 1))
            for col in ("tensor", "shape", f"tol {result['tol']:g}", "bitwise") + (("rank",) if rk else ()):
                t.add_column(col, justify="left" if col == "tensor" else "right")
            for name, value in sp["per_tensor"].items():
                rank = ""
                if rk and name in rk["per_tensor"]:
                    rank = f"{rk['rank'][name]}/{rk['full'][name]}" if "rank" in rk else pct(rk["per_tensor"][name])
                t.add_row(name, "×".join(map(str, shapes.get(name, []))), pct(value, 2),
                          pct(sp["per_tensor_bitwise"][name], 2), *((rank,) if rk else ()))
            console.print(t)
    # 4) overlap of each pair of updates, beside what independent masks of the same densities would give
    if result.get("overlap"):
        t = Table(title="subnetwork overlap of the updated weights, and chance (independent masks of the same "
                        "densities): o1 = |Ia ∩ Ib| / |Ia|, o2 = |Ia ∩ Ib| / |Ib|, Jaccard = |Ia ∩ Ib| / |Ia ∪ Ib|",
                  title_justify="left")
        for col in ("pair", "rule", "o1", "chance", "o2", "chance", "Jaccard", "chance"):
            t.add_column(col, justify="left" if col in ("pair", "rule") else "right")
        for o in result["overlap"]:
            for mode, rule in (("tol", f"tol {result['tol']:g}"), ("bitwise", "bitwise")):
                s = o[mode]
                t.add_row(f"θ{o['updates'][0]}, θ{o['updates'][1]}", rule, pct(s["o1"]), pct(s["o1_random"]),
                          pct(s["o2"]), pct(s["o2_random"]), pct(s["jaccard"]), pct(s["jaccard_random"]))
        console.print(t)
        console.print("paper (arXiv 2505.11711), across seeds: o1/o2 60.5/60.6 % vs chance 36.7/36.7 %")
    console.print(f"read and compared in {result['seconds']:.2f} s")


def render_regime(result, console: Console | None = None) -> None:
    """`minirl reproduce regime`: each grid point's relative step, sparsity and gain over seeds, and the answer."""
    from minirl.experiments.regime import GAIN_BAR, SPARSITY_BAR

    console = console or Console()
    if result.config.get("quick"):
        console.print("[bold yellow]--quick: a smoke test of 8-step runs on 20 problems a task; these numbers mean "
                      "nothing[/]")
    t = Table(title=f"GRPO from the SFT model over {result.points[0]['seeds']} seed(s): mean (min-max)",
              title_justify="left")
    for col in ("point", "lr / rms(w)", "eps / grad rms", "sparsity %", "gain", "tax"):
        t.add_column(col, justify="left" if col == "point" else "right")
    for p in result.points:
        if p["knob"] == "width":
            continue  # the width table below
        t.add_row(p["point"], f"{p['relative_step']:.1e}", f"{p.get('eps_over_grad', float('nan')):.0e}",
                  f"{p['sparsity']:.1f} ({p['sparsity_min']:.1f}-{p['sparsity_max']:.1f})",
                  f"{p['gain']:+.1f} ({p['gain_min']:+.1f} to {p['gain_max']:+.1f})", f"{p['tax']:+.2f}")
    console.print(t)
    render_widths(result.widths, console)
    a = result.answer
    if a["exists"]:
        console.print(f"[green]a toy run can be both: {', '.join(a['points'])} gained >= {GAIN_BAR:g} points and was "
                      f">= {SPARSITY_BAR:g} % sparse in every seed[/]")
    else:
        best = (f"the sparsest point that gained >= {GAIN_BAR:g} in every seed: {a['sparsest_learning']} "
                f"({a['sparsest_learning_sparsity']:.1f} % sparse)" if a["sparsest_learning"] else
                f"no point gained >= {GAIN_BAR:g} in every seed")
        console.print(f"[red]no grid point both gained >= {GAIN_BAR:g} points and was >= {SPARSITY_BAR:g} % sparse in "
                      f"every seed[/]; {best}; the sparsest point: {a['sparsest']}")


def render_widths(trend: dict, console: Console) -> None:
    """The width axis of `minirl reproduce regime`: per width the weights' RMS, gain and sparsity at each lr, the
    paper preset, the half-ULP predictor, and the straight-line fits against log2(width) carried to width 4096."""
    from minirl.experiments.regime import WIDTH_LRS

    rows = trend.get("widths", [])
    if len(rows) < 2:
        return
    lrs = tuple(WIDTH_LRS.values())
    t = Table(title="the width axis: GRPO from each width's SFT model (fp32 master, bf16 storage, 150 steps); "
                    "gain/sparsity % at each lr, mean over seeds", title_justify="left")
    for col in ("width", "rms(w)", *(f"lr {lr:.0e}" for lr in lrs), "paper preset", "½ULP > lr *"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        at = dict(zip(r["lrs"], zip(r["gains"], r["sparsities"])))
        cells = [f"{at[lr][0]:+.1f}/{at[lr][1]:.1f}" if lr in at else "-" for lr in lrs]
        paper = f"{r['paper']['gain']:+.1f}/{r['paper']['sparsity']:.1f}" if "paper" in r else "-"
        ulp = f"{r['half_ulp']['exact']:.1f}" if "half_ulp" in r else "-"
        t.add_row(str(r["width"]), f"{r['rms_w']:.3f}", *cells, paper, ulp)
    console.print(t)
    console.print("  * % of the SFT model's weights whose half bf16 ULP exceeds the paper preset's lr (1e-4): the "
                  "paper preset's sparsity, predicted before training (for normal weights of the same rms(w): "
                  + ", ".join(f"{r['half_ulp']['gaussian']:.1f}" for r in rows if "half_ulp" in r) + ")")
    fits, hi = trend["fits"], trend["predict_width"]
    names = {"rms_w": "rms(w)", "best_lr": "the best lr", "best_sparsity": "sparsity at the best lr",
             "paper_sparsity": "the paper preset's sparsity",
             **{f"sparsity_{name}": f"sparsity at lr {name[2:]}" for name in WIDTH_LRS}}
    for key, f in fits.items():
        trendword = (f"x width^{f['slope']:.2f}" if f["log"] else f"{f['slope']:+.1f} points per doubling")
        value = f"{f['predicted']:.2g}" if f["log"] else f"{f['predicted']:.0f} %"
        console.print(f"  {names.get(key, key)}: {trendword} (r^2 {f['r2']:.2f}, widths "
                      f"{', '.join(map(str, f['widths']))}) -> {value} at width {hi}")
    if "half_ulp_at_predict_width" in trend:
        console.print(f"  the paper preset's predictor (*) for normal weights of the extrapolated RMS at width {hi}: "
                      + ", ".join(f"lr {lr}: {v:.1f} %" for lr, v in trend["half_ulp_at_predict_width"].items()))
    if fits:
        console.print(f"  [dim]straight lines through {len(rows)} widths carried "
                      f"{math.log2(hi / max(r['width'] for r in rows)):.0f} doublings past the data: a trend, "
                      f"not a measurement[/]")


def render_trl(r: dict, console: Console | None = None, detail: bool = True) -> None:
    """`minirl report OUT` of a TRL output (`minirl.export.trl_report`): the recipe, TRL's curves, greedy accuracy
    of the init and of TRL's result on every task, the update's sparsity and rank, and with --beside the minirl run
    of the same config in a second column."""
    from rich.markup import escape

    console = console or Console()
    b = r.get("beside")
    runtime = "" if r.get("train_runtime") is None else f" · {r['train_runtime']:.1f} s training"
    lines = [f"[bold]TRL {r.get('trainer', '?')}[/] on the recipe of minirl `{r.get('minirl_command', '?')}` · init "
             f"{r.get('init', '?')} · {r['steps']} steps{runtime} · output {r['output']}"]
    if "config" in r:
        keys = ("max_steps", "learning_rate", "per_device_train_batch_size", "num_generations", "beta", "loss_type",
                "reward_weights", "max_completion_length", "temperature")
        lines.append("recipe: " + escape(", ".join(f"{k} {r['config'][k]}" for k in keys if k in r["config"]))
                     + f" · optimizer {r['optimizer']} · every field: {r['recipe_dir']}/MAPPING.md")
    lines += [f"[yellow]warning[/]: {escape(w)}" for w in r.get("warnings", [])]
    lines += [_curve_line(r, name, f"TRL {name}") for name in r["curves"]]
    if b:
        lines += [_curve_line(b, name, f"minirl {name}") for name in b["curves"]]
    if r.get("missing"):
        lines.append(f"[yellow]{escape(r['missing'])}[/]")
    console.print(Panel(Group(*lines), title="minirl report of a TRL run", expand=False))
    if "accuracy" not in r:
        return
    # 1) accuracy on every task: the init, TRL's result, and (--beside) minirl's own run
    acc, mine = r["accuracy"], b["accuracy"] if b else None
    t = Table(title="greedy accuracy on the held-out benchmark (n problems; change in points)", title_justify="left")
    cols = ["task", "n", "init", "TRL", "change"] + (["n", "minirl", "change"] if b else [])
    for col in cols:
        t.add_column(col, justify="left" if col == "task" else "right")
    order, trained = list(TASKS), r["trained_tasks"]
    for task in sorted(acc["before"], key=lambda x: (x not in trained, order.index(x) if x in order else len(order))):
        d = acc["after"][task] - acc["before"][task]
        row = [f"[bold]{task}[/] (trained)" if task in trained else task, str(acc["n"][task]),
               pct(acc["before"][task]), pct(acc["after"][task]), f"{100 * d:+.1f}"]
        if b and task in mine["after"]:
            dm = mine["after"][task] - mine["before"][task]
            row += [str(mine["n"].get(task, "")), pct(mine["after"][task]), f"{100 * dm:+.1f}"]
        t.add_row(*row)
    console.print(t)
    # 2) the update, beside minirl's
    u = Table(title="the update θ1 − θ0 (weights compared in bf16, as the papers)", title_justify="left")
    for col in ["quantity", "TRL (fp32 training)"] + ([f"minirl ({b['precision']} storage)"] if b else []):
        u.add_column(col, justify="left" if col == "quantity" else "right")
    sp, rk = r["sparsity"], r["rank"]
    rows = [("steps", str(r["steps"]), str(b["steps"]) if b else ""),
            ("training seconds", "n/a" if r.get("train_runtime") is None else f"{r['train_runtime']:.1f}",
             f"{b['wall_seconds']:.1f}" if b else ""),
            (f"sparsity (|Δ| <= {sp['tol']:g})", pct(sp["overall"]), pct(b["sparsity"]["overall"]) if b else ""),
            ("sparsity (bitwise)", pct(sp["bitwise"]), pct(b["sparsity"]["bitwise"]) if b else ""),
            ("rank (mean fraction of full)", pct(rk["mean_fraction"]), pct(b["rank"]["mean_fraction"]) if b else "")]
    for row in rows:
        u.add_row(*row[:3 if b else 2])
    console.print(u)
    if detail:
        console.print(_grid_table(sp["per_tensor"], "TRL's update sparsity per matrix (bf16, tol 1e-5)"))
        console.print(_grid_table(rk["per_tensor"], "TRL's update rank per matrix (fraction of full rank)"))
    if b:
        console.print(f"minirl run: {b['run_dir']}")
