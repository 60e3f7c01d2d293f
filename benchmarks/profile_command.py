"""Where the wall time of a whole `minirl run ALGO --report` command goes, part by part.

    python benchmarks/profile_command.py                        # minirl run grpo --report, in this process
    python benchmarks/profile_command.py ppo -- --steps 20      # any `minirl run` options after --
    python benchmarks/profile_command.py --whole 3 --vs /tmp/head   # the real command as a subprocess, 3 rounds,
                                                                    # alternating with the checkout at /tmp/head

In-process (the default), the command runs exactly as `minirl run ALGO --report`
does (`minirl.cli.main`), with each of its parts timed by wrapping it:

  0. `import minirl.cli` (from this script's first line: NumPy, SciPy, rich, click, minirl);
  1. `runs.build`: loading the init model twice (the policy and the frozen reference);
  2. the accuracy benchmark before (`runs.benchmark`: greedy, the trained task on 1000
     held-out problems, every other task on 200), each task apart;
  3. `minirl.train.train`: the steps, of which sampling (`Transformer.generate`);
  4. saving the final checkpoint (`RunDir.save_model`);
  5. the accuracy benchmark after;
  6. `runs.final_kl`: 256 fresh samples scored by the policy and the reference;
  7. `runs.update_analysis`: sparsity at every tolerance, fp32 equality, the rank SVDs;
  8. rendering the report (`minirl.report.render`, written to a discarded console);
  and what is left between them (config resolution, θ0 copies, report.json).

`--whole N` times the real command instead, as a subprocess (`python -m minirl.cli
run ALGO --report --no-progress`, stdout discarded), N times, wall clock from
spawn to exit; with `--vs DIR` each round also runs the checkout at DIR (another
copy of minirl, put first on PYTHONPATH) right after, so both see the same load,
and the reports' numbers are compared (accuracies, KL, sparsity, rank: they must
be identical when the two differ only in speed).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # before any import: the command's own import time is part 0

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("algo", nargs="?", default="grpo", help="the algorithm of `minirl run` (default grpo)")
    p.add_argument("--whole", type=int, default=0, metavar="N",
                   help="time the real command as a subprocess N times instead of the in-process breakdown")
    p.add_argument("--vs", metavar="DIR", help="with --whole: alternate with the minirl checkout at DIR")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="-- then any `minirl run ALGO` options")
    args = p.parse_args(argv)
    args.rest = [a for a in args.rest if a != "--"]
    return args


class Phases:
    """Wall time per part; a wrapped function is timed into the part it names, nested parts into their parent."""

    def __init__(self):
        self.times = defaultdict(float)
        self.order = []
        self.stack = []
        self.saved = []

    def wrap(self, owner, attr, name, sub: bool = False):
        """Time every call of owner.attr as `name` (a callable of the call count gives a name per call)."""
        fn = getattr(owner, attr)
        calls = [0]

        def wrapped(*args, **kwargs):
            calls[0] += 1
            label = name(calls[0], *args, **kwargs) if callable(name) else name
            if sub:  # a part inside the current one
                label = f"{self.stack[-1] if self.stack else '(outside)'} / {label}"
            if label not in self.order:
                self.order.append(label)
            self.stack.append(label)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.times[label] += time.perf_counter() - t0
                self.stack.pop()

        self.saved.append((owner, attr, fn))
        setattr(owner, attr, wrapped)

    def restore(self):
        for owner, attr, fn in reversed(self.saved):
            setattr(owner, attr, fn)


def in_process(args) -> None:
    """The command in this process, each part timed."""
    import minirl.cli as cli  # part 0: the command's imports
    t_imported = time.perf_counter()
    import minirl.report
    from minirl import runs
    from minirl.model import Transformer

    ph = Phases()
    ph.wrap(runs, "build", "1 load init model (policy + reference)")
    ph.wrap(runs, "accuracy", lambda i, *a, **k: "2 benchmark before" if i == 1 else "5 benchmark after")
    ph.wrap(runs, "benchmark", lambda i, model, tasks, n=200, **k: f"{tasks[0]} (n={n})", sub=True)
    ph.wrap(runs, "train", "3 train")
    ph.wrap(Transformer, "generate", "model.generate", sub=True)
    ph.wrap(runs.RunDir, "save_model", "4 save final checkpoint")
    ph.wrap(runs, "final_kl", "6 final KL (256 samples, policy + reference log-probs)")
    ph.wrap(runs, "update_analysis", "7 update analysis (sparsity, fp32 equality, rank SVDs)")
    sink = io.StringIO()

    def render(r, console=None, detail=True):
        from rich.console import Console
        return render.original(r, console or Console(file=sink, width=100), detail)

    render.original = minirl.report.render
    minirl.report.render = render
    ph.wrap(minirl.report, "render", "8 render the report")

    out = tempfile.mkdtemp(prefix="profile-command-")
    argv = ["run", args.algo, "--report", "--out", os.path.join(out, "run"), "--no-progress", *args.rest]
    t0 = time.perf_counter()
    try:
        cli.main(argv, standalone_mode=False)
    finally:
        ph.restore()
        minirl.report.render = render.original
    total = time.perf_counter() - t0
    whole = time.perf_counter() - T_START
    report = json.loads(open(os.path.join(out, "run", "report.json")).read())

    print(f"`minirl {' '.join(argv)}`: {whole:.2f} s from this script's first line "
          f"(load average at the end {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
          + ("; other processes shared the CPUs: timings are noisy" if os.getloadavg()[0] > 0.5 else "") + ")")
    print(f"  {'part':<62} {'s':>7} {'%':>6}")
    rows = [("0 import minirl.cli (NumPy, SciPy, rich, click, minirl)", t_imported - T_START)]
    rows += [(k, ph.times[k]) for k in ph.order]  # first calls come in the command's order, parents first
    top = sum(s for k, s in rows if " / " not in k)
    rows.append(("(the rest: config, θ0 copies, relative step, report.json, ...)", total - (top - rows[0][1])))
    for name, s in rows:
        label = "   " * name.count(" / ") + name.rsplit(" / ", 1)[-1]
        print(f"  {label:<62} {s:7.2f} {100 * s / whole:6.1f}")
    steps = report["steps"]
    gen = ph.times.get("3 train / model.generate", 0.0)
    print(f"  training: {steps} steps, {1e3 * ph.times['3 train'] / steps:.0f} ms/step, of which sampling "
          f"{1e3 * gen / steps:.0f} ms/step")
    acc = report["accuracy"]
    print("  accuracy before -> after: " + ", ".join(f"{t} {100 * acc['before'][t]:.1f} -> {100 * acc['after'][t]:.1f}"
                                                     for t in acc["before"]))


NUMBERS = ("accuracy", "kl", "sparsity", "rank", "curves", "steps")
"""The report's measured numbers: identical whenever two versions of minirl differ only in speed."""


def whole(args) -> None:
    """The real command as a subprocess, `--whole` times, alternating with `--vs` when given."""
    sides = [("this checkout", ROOT)] + ([("--vs " + args.vs, os.path.abspath(args.vs))] if args.vs else [])
    times = {name: [] for name, _ in sides}
    numbers = {}
    print(f"`minirl run {args.algo} --report --no-progress {' '.join(args.rest)}` as a subprocess, "
          f"{args.whole} round(s){', alternating' if args.vs else ''}")
    for i in range(args.whole):
        for name, path in sides:
            with tempfile.TemporaryDirectory() as tmp:
                env = {**os.environ, "PYTHONPATH": path + os.pathsep + os.environ.get("PYTHONPATH", "")}
                cmd = [sys.executable, "-m", "minirl.cli", "run", args.algo, "--report", "--no-progress",
                       "--out", os.path.join(tmp, "run"), *args.rest]
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                subprocess.run(cmd, env=env, cwd=tmp, check=True, stdout=subprocess.DEVNULL)
                wall = time.perf_counter() - t0
                report = json.loads(open(os.path.join(tmp, "run", "report.json")).read())
                times[name].append(wall)
                numbers.setdefault(name, {k: report.get(k) for k in NUMBERS})
                print(f"  round {i + 1} {name:<28} {wall:6.2f} s   (load average before {load:.2f})")
    for name, ts in times.items():
        print(f"  {name:<36} median {statistics.median(ts):6.2f} s, min {min(ts):6.2f} s")
    if args.vs:
        a, b = (numbers[name] for name, _ in sides)
        same = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
        print(f"  ratio of medians {statistics.median(times[sides[0][0]]) / statistics.median(times[sides[1][0]]):.3f}"
              f"; report numbers ({', '.join(NUMBERS)}) identical: {same}")
        if not same:
            for k in NUMBERS:
                if json.dumps(a[k], sort_keys=True) != json.dumps(b[k], sort_keys=True):
                    print(f"    differs: {k}")


if __name__ == "__main__":
    ARGS = parse_args()
    sys.path.insert(0, ROOT)  # run from a checkout
    if ARGS.whole:
        whole(ARGS)
    else:
        in_process(ARGS)
