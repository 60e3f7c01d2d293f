"""RL and fine-tuning algorithms, one file each, sharing rollouts, advantages, KL and losses.

    sft.py        pretraining and supervised fine-tuning (masked token NLL)
    rollout.py    G samples per prompt with the KV cache, verifier rewards
    advantages.py GAE, group-normalised and leave-one-out advantages, whitening
    kl.py         per-token KL estimators k1, k2, k3
    losses.py     GRPO (four normalisations), PPO policy/value, REINFORCE
    grpo.py  ppo.py  reinforce.py
"""

from __future__ import annotations


def algorithms() -> dict:
    """name -> (config class, algorithm class) for every RL algorithm `minirl run` knows."""
    from minirl.rl.grpo import GRPO, GRPOConfig
    from minirl.rl.ppo import PPO, PPOConfig
    from minirl.rl.reinforce import RLOO, Reinforce, ReinforceConfig, RLOOConfig

    return {"grpo": (GRPOConfig, GRPO), "ppo": (PPOConfig, PPO),
            "reinforce": (ReinforceConfig, Reinforce), "rloo": (RLOOConfig, RLOO)}


def make_algorithm(name: str, config, ref_model):
    """The algorithm object for `name` with its config and frozen reference model."""
    table = algorithms()
    if name not in table:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(table)}")
    return table[name][1](config, ref_model)
