"""RL and fine-tuning algorithms, one file each (config, batch, loss), sharing rollouts, advantages and KL.

    sft.py        pretraining and supervised fine-tuning (masked token NLL)
    rollout.py    RolloutConfig, Rollout: G samples per prompt with the KV cache, verifier rewards
    advantages.py GAE, group-normalised and leave-one-out advantages, whitening
    kl.py         per-token KL estimators k1, k2, k3
    masking.py    what every per-token loss shares: checked (B, T) inputs, inert padding, masked means
    grpo.py       GRPO and its loss in TRL's four normalisations
    ppo.py        PPO with a value head: policy and value losses, entropy bonus, KL controllers
    reinforce.py  REINFORCE (PERL's KL-regularised reward) and RLOO
    preference.py preference data (offline, on-policy, JSONL in TRL's formats), batches, sequence log-probs
    dpo.py        DPO and its loss types: sigmoid, IPO, hinge, robust
    kto.py        KTO on unpaired desirable/undesirable examples
    simpo.py      SimPO: reference-free, length-normalised, with a target margin
    orpo.py       ORPO: NLL on the chosen plus an odds-ratio term
    reward_model.py  Bradley-Terry reward model: loss, scoring, `reward = "rm:PATH"`
    rft.py        rejection-sampling fine-tuning (SFT on the policy's verified samples)
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
    from minirl.rl.dpo import DPO, IPO, DPOConfig, IPOConfig
    from minirl.rl.grpo import GRPO, GRPOConfig
    from minirl.rl.kto import KTO, KTOConfig
    from minirl.rl.orpo import ORPO, ORPOConfig
    from minirl.rl.ppo import PPO, PPOConfig
    from minirl.rl.reinforce import RLOO, Reinforce, ReinforceConfig, RLOOConfig
    from minirl.rl.reward_model import RewardModel, RMConfig
    from minirl.rl.rft import RFT, RFTConfig
    from minirl.rl.sft import SFT, SFTConfig
    from minirl.rl.simpo import SimPO, SimPOConfig

    return {"sft": (SFTConfig, SFT), "grpo": (GRPOConfig, GRPO), "ppo": (PPOConfig, PPO),
            "reinforce": (ReinforceConfig, Reinforce), "rloo": (RLOOConfig, RLOO),
            "dpo": (DPOConfig, DPO), "ipo": (IPOConfig, IPO), "kto": (KTOConfig, KTO), "simpo": (SimPOConfig, SimPO),
            "orpo": (ORPOConfig, ORPO), "rft": (RFTConfig, RFT), "rm": (RMConfig, RewardModel)}


def make_algorithm(name: str, config, ref_model):
    """The algorithm object for `name` with its config and frozen reference model."""
    table = algorithms()
    if name not in table:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(table)}")
    return table[name][1](config, ref_model)
