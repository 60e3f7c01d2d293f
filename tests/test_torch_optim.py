"""Parity of minirl.export.torch_optim (OnDARE, OnTIES, step-K in torch) with the NumPy optimizers, same inputs."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from minirl.export import torch_optim as T  # noqa: E402
from minirl.merging import online as N  # noqa: E402

torch.set_num_threads(1)

SHAPES = {"a.weight": (6, 5), "b.weight": (7,), "c.weight": (2, 3, 4)}
STEPS = 6


class P:
    """Stand-in NumPy parameter: .data (float32) and .grad."""

    def __init__(self, data):
        self.data = np.array(data, dtype=np.float32)
        self.grad = None


def inputs(seed=0):
    """(initial weights, τ_r, a gradient sequence), name -> float32 arrays."""
    rng = np.random.default_rng(seed)
    w0 = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    ref = {n: (0.5 * rng.standard_normal(s)).astype(np.float32) for n, s in SHAPES.items()}
    grads = [{n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()} for _ in range(STEPS)]
    return w0, ref, grads


def numpy_masks(seed: int, p: float):
    """A mask_fn that replays the NumPy optimizer's draws: τ_r's from [seed, 1], the steps' from [seed, 2]."""
    rngs = {"ref": np.random.default_rng([seed, 1]), "step": np.random.default_rng([seed, 2])}
    return lambda name, shape, kind: rngs[kind].random(shape) < p


def run_both(kind: str, masks: bool = False, **options):
    """The same weights, τ_r and gradients through the NumPy and the torch optimizer: max |difference| per step."""
    w0, ref, grads = inputs()
    adam = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    np_params = [(n, P(w)) for n, w in w0.items()]
    np_opt = {"ondare": N.OnDARE, "onties": N.OnTIES}[kind](np_params, **adam, ref_delta=ref, **options)
    th_params = [(n, torch.nn.Parameter(torch.tensor(w))) for n, w in w0.items()]
    mask_fn = numpy_masks(options.get("seed", 0), options["reserve_rate"]) if masks else None
    th_opt = T.OPTIMIZERS[kind](th_params, **adam, ref_delta={n: torch.tensor(r) for n, r in ref.items()},
                                mask_fn=mask_fn, **options)
    diffs = []
    for g in grads:
        for (n, p), (_, q) in zip(np_params, th_params):
            p.grad, q.grad = g[n].copy(), torch.tensor(g[n])
        np_opt.step()
        th_opt.step()
        diffs.append(max(float(np.abs(p.data - q.detach().numpy()).max()) for (_, p), (_, q) in
                         zip(np_params, th_params)))
    moved = max(float(np.abs(p.data - w0[n]).max()) for n, p in np_params)
    return diffs, moved, np_opt, th_opt


@pytest.mark.parametrize("options", [
    dict(reserve_rate=0.3, alpha=0.2),
    dict(reserve_rate=0.3, alpha=0.2, rescale="l1"),
    dict(reserve_rate=1.0, alpha=0.0),
    dict(reserve_rate=0.5, alpha=0.1, merge_every=3),
])
def test_onties_matches_numpy(options):
    diffs, moved, np_opt, th_opt = run_both("onties", **options)
    print("OnTIES", options, "max |numpy - torch| per step:", diffs)
    assert moved > 1e-3  # the weights did move
    assert max(diffs) < 1e-6
    assert th_opt.step_stats()["merge_ratio"] == pytest.approx(np_opt.step_stats()["merge_ratio"], rel=1e-5)


@pytest.mark.parametrize("options", [
    dict(reserve_rate=1.0, alpha=0.3),
    dict(reserve_rate=1.0, alpha=0.3, merge_every=2),
])
def test_ondare_p1_matches_numpy(options):
    diffs, moved, _, _ = run_both("ondare", **options)
    print("OnDARE", options, "max |numpy - torch| per step:", diffs)
    assert moved > 1e-3
    assert max(diffs) < 1e-6


@pytest.mark.parametrize("options", [
    dict(reserve_rate=0.3, alpha=0.2, seed=5),
    dict(reserve_rate=0.3, alpha=0.2, rescale="inverse_p"),
    dict(reserve_rate=0.3, alpha=0.2, rescale="l1"),
    dict(reserve_rate=0.4, alpha=0.1, merge_every=3, seed=2),
])
def test_ondare_injected_mask_matches_numpy(options):
    """With NumPy's own masks injected, OnDARE is NumPy's OnDARE step for step."""
    diffs, moved, _, _ = run_both("ondare", masks=True, **options)
    print("OnDARE (NumPy masks)", options, "max |numpy - torch| per step:", diffs)
    assert moved > 1e-3
    assert max(diffs) < 1e-6


def test_ondare_alpha0_p1_is_torch_adamw():
    """The special case PAPERS.md names: α = 0 and p = 1 is plain AdamW (torch's own)."""
    w0, ref, grads = inputs()
    a = [(n, torch.nn.Parameter(torch.tensor(w))) for n, w in w0.items()]
    b = [torch.nn.Parameter(torch.tensor(w)) for w in w0.values()]
    opt_a = T.OnDARE(a, lr=1e-2, weight_decay=0.1, ref_delta=ref, reserve_rate=1.0, alpha=0.0)
    opt_b = torch.optim.AdamW(b, lr=1e-2, weight_decay=0.1, foreach=False)
    for g in grads:
        for (n, p), q in zip(a, b):
            p.grad, q.grad = torch.tensor(g[n]), torch.tensor(g[n])
        opt_a.step()
        opt_b.step()
    err = max(float((p - q).detach().abs().max()) for (_, p), q in zip(a, b))
    print("OnDARE(alpha=0, p=1) vs torch.optim.AdamW:", err)
    assert err < 1e-6


def test_ondare_default_masks_keep_p_and_are_seeded():
    """The torch generator's masks keep about p of the entries, the same ones for the same seed."""
    def run(seed):
        w = torch.nn.Parameter(torch.zeros(200, 200))
        opt = T.OnDARE([("w", w)], lr=1e-2, weight_decay=0.0, ref_delta={"w": torch.zeros(200, 200)},
                       reserve_rate=0.25, alpha=0.0, seed=seed)
        w.grad = torch.ones(200, 200)
        opt.step()
        return w.detach().clone()

    a, b, c = run(0), run(0), run(1)
    kept = float((a != 0).float().mean())
    assert kept == pytest.approx(0.25, abs=0.01)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_options_are_checked():
    w = [("w", torch.nn.Parameter(torch.zeros(3)))]
    with pytest.raises(ValueError, match="reserve_rate"):
        T.OnDARE(w, ref_delta={"w": torch.zeros(3)}, reserve_rate=0.0)
    with pytest.raises(ValueError, match="rescale"):
        T.OnTIES(w, ref_delta={"w": torch.zeros(3)}, rescale="inverse_p")
    with pytest.raises(ValueError, match="ref_delta"):
        T.OnDARE(w, ref_delta={"v": torch.zeros(3)})
    with pytest.raises(ValueError, match="params"):
        T.OnDARE([w[0][1]], ref_delta={"w": torch.zeros(3)})
