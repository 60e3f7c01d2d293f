"""RL and fine-tuning algorithms, one file each (config, batch, loss), sharing rollouts, advantages and KL.

    sft.py        pretraining and supervised fine-tuning (masked token NLL)
    rollout.py    RolloutConfig, Rollout: G samples per prompt with the KV cache, verifier rewards
    advantages.py GAE, group-normalised and leave-one-out advantages, whitening
    kl.py         per-token KL estimators k1, k2, k3
    masking.py    what every per-token loss shares: checked (B, T) inputs, inert padding, masked means
    grpo.py       GRPO and its loss in TRL's four normalisations
    ppo.py        PPO with a value head: policy and value losses, entropy bonus, KL controllers
    reinforce.py  REINFORCE (PERL's KL-regularised reward) and RLOO
"""

from __future__ import annotations


def algorithms() -> dict:
    """name -> (config class, algorithm class) of every algorithm `minirl run` knows.

    An algorithm class is built as `Algo(config, ref_model)` (the frozen initial
    policy, for KL terms) and has `name`, `batch(policy, rng, step)` and
    `loss(policy, batch)`; optionally `minibatches(batch, rng)`,
    `updates_per_step`, `value_head = True` (it trains a value head on the
    policy) and `state_dict()` / `load_state_dict()` for state that resuming
    must restore (see minirl/train.py).
    """
    from minirl.rl.grpo import GRPO, GRPOConfig
    from minirl.rl.ppo import PPO, PPOConfig
    from minirl.rl.reinforce import RLOO, Reinforce, ReinforceConfig, RLOOConfig
    from minirl.rl.sft import SFT, SFTConfig

    return {"sft": (SFTConfig, SFT), "grpo": (GRPOConfig, GRPO), "ppo": (PPOConfig, PPO),
            "reinforce": (ReinforceConfig, Reinforce), "rloo": (RLOOConfig, RLOO)}


def make_algorithm(name: str, config, ref_model):
    """The algorithm object for `name` with its config and frozen reference model."""
    table = algorithms()
    if name not in table:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(table)}")
    return table[name][1](config, ref_model)
