"""Typed configs: unknown keys and wrong types are errors that name the key; overrides work."""
import pytest

from prefkit.config import ConfigError, apply_overrides, from_dict
from prefkit.methods.dpo import DPORunConfig
from prefkit.train.cli_train import load_run_config


def test_tiny_config_loads_with_overrides():
    module, cfg = load_run_config("configs/dpo_tiny.yaml", ["train.learning_rate=3e-4", "method.beta=0.2"])
    assert cfg.train.learning_rate == 3e-4 and cfg.method.beta == 0.2
    assert cfg.model.init_config["model_type"] == "qwen2"


def test_unknown_key_names_path_and_suggests():
    with pytest.raises(ConfigError, match=r"train\.lerning_rate: unknown key; did you mean 'learning_rate'"):
        load_run_config("configs/dpo_tiny.yaml", ["train.lerning_rate=1e-4"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected an integer"):
        load_run_config("configs/dpo_tiny.yaml", ["train.batch_size=eight"])
    with pytest.raises(ConfigError, match=r"method\.beta: expected a number"):
        load_run_config("configs/dpo_tiny.yaml", ["method.beta=[1]"])


def test_bad_value_rejected_at_construction():
    with pytest.raises(ConfigError, match="loss_kind"):
        load_run_config("configs/dpo_tiny.yaml", ["method.loss_kind=kto"])
    with pytest.raises(ConfigError, match="lr_scheduler"):
        load_run_config("configs/dpo_tiny.yaml", ["train.lr_scheduler=step"])


def test_kv_backend_accepted_but_not_with_gradient_checkpointing():
    _, cfg = load_run_config("configs/dpo_tiny.yaml", ["method.backend=kv"])
    assert cfg.method.backend == "kv"
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        load_run_config("configs/dpo_tiny.yaml", ["method.backend=kv", "model.gradient_checkpointing=true"])
    with pytest.raises(ConfigError, match="prefix, naive or kv"):
        load_run_config("configs/dpo_tiny.yaml", ["method.backend=flash"])


@pytest.mark.parametrize("impl", ["flash_attention_2", "flex_attention"])
def test_prefix_backend_needs_an_attention_kernel_that_takes_its_block_mask(impl):
    with pytest.raises(ConfigError, match="4D block mask"):
        load_run_config("configs/dpo_tiny.yaml", [f"model.attn_implementation={impl}"])
    for backend in ("kv", "naive"):  # ordinary padding masks: any kernel
        _, cfg = load_run_config("configs/dpo_tiny.yaml", [f"model.attn_implementation={impl}", f"method.backend={backend}"])
        assert cfg.model.attn_implementation == impl
    _, cfg = load_run_config("configs/dpo_tiny.yaml", ["model.attn_implementation=eager"])
    assert cfg.method.backend == "prefix"


def test_missing_section_and_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_run_config(str(tmp_path / "nope.yaml"), [])
    with pytest.raises(ConfigError):
        from_dict(DPORunConfig, {"model": {"tokenizer": "byte"}})


def test_yaml_is_safe_loaded(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(str(p), [])


def test_apply_overrides_nested():
    d = apply_overrides({"a": {"b": 1}}, ["a.c=2", "x.y.z=true"])
    assert d == {"a": {"b": 1, "c": 2}, "x": {"y": {"z": True}}}


def test_yaml_no_yes_on_off_are_strings_and_true_false_booleans(tmp_path):
    """YAML 1.1 reads `no` as False, so `train.mixed_precision=no` used to be a type error."""
    _, cfg = load_run_config("configs/dpo_tiny.yaml", ["train.mixed_precision=no", "train.tensorboard=false"])
    assert cfg.train.mixed_precision == "no" and cfg.train.tensorboard is False
    f = tmp_path / "c.yaml"
    f.write_text(open("configs/dpo_tiny.yaml").read() + "\n")
    _, cfg = load_run_config(str(f), ["train.mixed_precision=bf16", "train.progress_bar=False"])
    assert cfg.train.mixed_precision == "bf16" and cfg.train.progress_bar is False


def test_override_errors_name_the_key_inside_an_optional_section_and_text_needs_no_quotes():
    with pytest.raises(ConfigError, match="model.lora.target_modul: unknown key; did you mean 'target_modules'"):
        load_run_config("configs/dpo_tiny.yaml", ["model.lora.target_modul=[q_proj]"])
    with pytest.raises(ConfigError, match="model.lora.r: expected an integer"):
        load_run_config("configs/dpo_tiny.yaml", ["model.lora.r=abc"])
    _, cfg = load_run_config("configs/dpo_tiny.yaml", ["data.prompt_template=Question: {prompt} Answer:"])
    assert cfg.data.prompt_template == "Question: {prompt} Answer:"  # not YAML: taken as the text it is
    with pytest.raises(ConfigError, match="quote it"):
        load_run_config("configs/dpo_tiny.yaml", ["data.prompt_template={prompt}"])  # a YAML mapping


def test_step_dpo_beta_defaults_to_the_papers():
    from prefkit.methods.dpo import MethodConfig

    assert MethodConfig(name="step_dpo").beta == 0.4 and MethodConfig(name="dpo").beta == 0.1
    assert MethodConfig(name="step_dpo", beta=0.2).beta == 0.2


def test_templates_with_single_braces_are_refused_at_config_time():
    """A literal brace in a str.format template (\\boxed{}) would fail at the first row; the config says how to
    write it instead, for every template a config or flag takes."""
    from prefkit.methods.dpo import DataConfig
    from prefkit.pipelines.safety_pairs import SafetyPairsConfig
    from prefkit.pipelines.step_pairs import StepPairsConfig

    with pytest.raises(ValueError, match=r"data.prompt_template: .*write \{\{ and \}\}"):
        DataConfig(train_file="x.jsonl", prompt_template="Q: {prompt} within \\boxed{}. A:")
    assert DataConfig(train_file="x.jsonl", prompt_template="Q: {prompt} within \\boxed{{}}. A:").settings() \
        .prompt_template.format(prompt="1+1") == "Q: 1+1 within \\boxed{}. A:"
    with pytest.raises(ValueError, match="must contain"):
        DataConfig(train_file="x.jsonl", prompt_template="Q: A:")
    with pytest.raises(ValueError, match="write"):
        StepPairsConfig(prompt_template="Question: {question} {x}")
    with pytest.raises(ValueError, match="write"):
        SafetyPairsConfig(prompt_template="{prompt} }")
    from prefkit.pipelines.step_judges import LLMStepJudge
    with pytest.raises(ValueError, match="judge-prompt-file.*write"):
        LLMStepJudge(None, prompt="Q: {question} gold {gold}\n{steps}\nanswer in \\boxed{}")


def test_image_recipes_refuse_torch_compile():
    from prefkit.train.cli_train import load_run_config

    for name in ("configs/diffusion_dpo_shapes.yaml", "configs/spo_shapes.yaml"):
        with pytest.raises(ValueError, match="torch_compile: language-model recipes only"):
            load_run_config(name, ["train.torch_compile=true"])


def test_fp16_weights_with_fp16_mixed_precision_are_refused():
    with pytest.raises(ValueError, match="grad scaler cannot unscale fp16"):
        load_run_config("configs/dpo_tiny.yaml", ["model.dtype=float16", "train.mixed_precision=fp16"])
