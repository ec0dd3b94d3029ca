"""What a user gets wrong ends in one message naming the key, not a traceback: a missing model folder (not looked
up on the hub), a model folder without tokenizer files, a missing optional package; a bug still shows its traceback."""
import pytest

from prefkit import cli
from prefkit.cli import main


def _train(tmp_path, *overrides):
    return main(["train", "configs/dpo_tiny.yaml", f"train.output_dir={tmp_path / 'out'}", "train.progress_bar=false",
                 *overrides])


def test_missing_model_folder_and_tokenizer_files_are_messages(tmp_path, capsys):
    assert _train(tmp_path, f"model.name_or_path={tmp_path / 'nothere'}", "model.init_config=null",
                  "model.tokenizer=null") == 2
    err = capsys.readouterr().err
    assert "model.name_or_path" in err and "no such folder" in err and "Traceback" not in err

    from transformers import AutoConfig, AutoModelForCausalLM
    AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "llama", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1)).save_pretrained(tmp_path / "weights_only")
    assert _train(tmp_path, f"model.name_or_path={tmp_path / 'weights_only'}", "model.init_config=null",
                  "model.tokenizer=null") == 2
    err = capsys.readouterr().err
    assert "holds no tokenizer files" in err and "set model.tokenizer" in err and "Traceback" not in err


def test_missing_package_is_a_message_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    def missing(argv):
        raise ImportError("flash_attn is not installed")

    def bug(argv):
        raise KeyError("oops")

    class Fake:
        cli_main = staticmethod(missing)

    monkeypatch.setattr(cli.importlib, "import_module", lambda name: Fake)
    assert main(["train", "x.yaml"]) == 2
    assert "ImportError: flash_attn is not installed" in capsys.readouterr().err
    Fake.cli_main = staticmethod(bug)
    with pytest.raises(KeyError):
        main(["train", "x.yaml"])


def test_step_dpo_on_plain_pairs_is_refused(tmp_path, capsys):
    """method.name step_dpo on prompt/chosen/rejected rows would silently be plain DPO (with EOS)."""
    assert _train(tmp_path, "method.name=step_dpo") == 2
    err = capsys.readouterr().err
    assert "holds plain pairs" in err and "method.name: dpo" in err
