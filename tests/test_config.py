"""Configs as data: TOML in and out, the layers of a resolved run config, and the errors that name what is wrong."""

import dataclasses
import tomllib

import pytest

from minirl import runs
from minirl.config import check_fields, dumps_toml, from_values, load_toml, to_values
from minirl.optim import OptimizerConfig
from minirl.rl import algorithms
from minirl.rl.grpo import GRPOConfig
from minirl.train import TrainConfig


def test_check_fields_names_the_class_the_field_and_what_is_allowed():
    cfg = TrainConfig()
    check_fields(cfg, [("steps", True, ">= 0")])
    with pytest.raises(ValueError, match=r"^TrainConfig\.seed must be an int, got 0$"):
        check_fields(cfg, [("steps", True, ">= 0"), ("seed", False, "an int")])


@pytest.mark.parametrize("cls", [GRPOConfig, TrainConfig, OptimizerConfig])
def test_toml_round_trip_of_every_field(cls):
    cfg = cls()
    text = dumps_toml({"section": to_values(cfg)})
    assert from_values(cls, tomllib.loads(text)["section"], "[section]") == cfg


def test_none_tuples_and_numbers_survive_toml():
    cfg = GRPOConfig(epsilon_high=0.28, max_new_tokens=None)
    back = from_values(GRPOConfig, tomllib.loads(dumps_toml({"g": to_values(cfg)}))["g"], "[g]")
    assert back.epsilon_high == 0.28 and back.max_new_tokens is None
    opt = from_values(OptimizerConfig, {"betas": [0.9, 0.95], "lr": 1, "warmup_steps": 10.0}, "[optimizer]")
    assert opt.betas == (0.9, 0.95) and opt.lr == 1.0 and isinstance(opt.lr, float) and opt.warmup_steps == 10
    doc = tomllib.loads(dumps_toml({"top": "a \"quoted\"\nline", "t": {"x": float("inf"), "flag": True}}))
    assert doc == {"top": 'a "quoted"\nline', "t": {"x": float("inf"), "flag": True}}


@pytest.mark.parametrize("values, message", [
    ({"nope": 1}, r"\[grpo\]: unknown key\(s\) nope; allowed: task, num_prompts"),
    ({"num_prompts": "many"}, r"\[grpo\]\.num_prompts must be an integer, got 'many'"),
    ({"num_prompts": 2.5}, r"\[grpo\]\.num_prompts must be an integer, got 2\.5"),
    ({"temperature": True}, r"\[grpo\]\.temperature must be a float, got True"),
    ({"epsilon": 0.0}, r"GRPOConfig\.epsilon must be > 0, got 0\.0"),
])
def test_bad_values_name_the_section_and_field(values, message):
    with pytest.raises(ValueError, match=message):
        from_values(GRPOConfig, values, "[grpo]")


def test_malformed_and_missing_files_are_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[grpo]\nlr = \n")
    with pytest.raises(ValueError, match=r"bad\.toml: not valid TOML"):
        load_toml(bad)
    with pytest.raises(ValueError, match=r"nothere\.toml: no such config file"):
        load_toml(tmp_path / "nothere.toml")


# ------------------------------------------------------------------------------------- layers
def test_every_algorithm_has_a_preset_that_resolves():
    for name in ["pretrain", *algorithms()]:
        spec = runs.resolve(name)
        assert set(spec.configs) == set(runs.sections(name))
        assert (spec.init is None) == (name == "pretrain")


def test_settings_of_a_job_have_unique_names_across_sections():
    for name in ["pretrain", *algorithms()]:
        names = [f.name for cls in runs.sections(name).values() for f in dataclasses.fields(cls)]
        assert len(names) == len(set(names)), name


def test_layers_override_in_order_defaults_preset_file_settings(tmp_path):
    preset = runs.preset("grpo")
    spec = runs.resolve("grpo")
    for section in ("train", "optimizer"):  # 2) the preset's values win over the dataclass defaults
        for key, value in preset.get(section, {}).items():
            assert getattr(spec[section], key) == (tuple(value) if isinstance(value, list) else value), key
    assert spec["grpo"].epsilon == GRPOConfig().epsilon  # 1) what the preset leaves alone
    user = tmp_path / "mine.toml"
    user.write_text('init = "base"\n[grpo]\nbeta = 0.04\n[optimizer]\nlr = 3e-5\n')
    spec = runs.resolve("grpo", user)  # 3) the file wins over the preset
    assert (spec.init, spec["grpo"].beta, spec["optimizer"].lr) == ("base", 0.04, 3e-5)
    spec = runs.resolve("grpo", user, lr=1e-5, init="sft", seed=4)  # 4) single settings win over the file
    assert (spec.init, spec["grpo"].beta, spec["optimizer"].lr, spec["train"].seed) == ("sft", 0.04, 1e-5, 4)


def test_a_resolved_config_toml_resolves_to_itself(tmp_path):
    spec = runs.resolve("ppo", lr=7e-5, num_prompts=8, grad_clip=None, betas=(0.9, 0.95))
    path = tmp_path / "config.toml"
    path.write_text(spec.to_toml())
    assert runs.resolve("ppo", path) == spec
    assert load_toml(tmp_path) == load_toml(path)  # a run directory stands for its config.toml


@pytest.mark.parametrize("text, message", [
    ('[ppo]\nclip_coef = 0.1\n', r"\[ppo\] is not a section of `minirl run grpo` \(its sections: \[grpo\], \[lora\], \[train\], \[optimizer\]\)"),
    ('[train]\nlearning_rate = 1\n', r"\[train\]: unknown key\(s\) learning_rate; allowed: steps"),
    ('command = "run ppo"\n', r"is the config of `minirl run ppo`, not of `minirl run grpo`"),
    ('colour = "red"\n', r"unknown top-level key 'colour'"),
])
def test_a_file_for_something_else_is_refused_naming_it(tmp_path, text, message):
    path = tmp_path / "x.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        runs.resolve("grpo", path)


def test_an_unknown_setting_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown setting 'learning_rate' for `minirl run grpo`; known: init, beta"):
        runs.resolve("grpo", learning_rate=1e-4)


def test_the_paper_preset_layers_pure_bf16_and_twice_the_steps_over_every_algorithm():
    from minirl import runs

    for name in ("grpo", "ppo", "dpo", "kto", "simpo", "orpo", "rft", "reinforce", "rloo", "ipo"):
        default, paper = runs.resolve(name), runs.resolve(name, "paper")
        assert paper["train"].precision == "pure_bf16" and paper["train"].steps == 2 * default["train"].steps
        assert paper["optimizer"].lr == default["optimizer"].lr and paper[name] == default[name]
    assert runs.resolve("grpo", "paper", steps=7)["train"].steps == 7  # typed options still win
    with pytest.raises(ValueError, match="no paper preset for `minirl run sft`"):
        runs.resolve("sft", "paper")
