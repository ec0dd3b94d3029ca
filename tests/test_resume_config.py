"""Resuming continues the same run: a checkpoint remembers its configuration and a changed one is refused (it
would be applied only in part); metrics.jsonl loses the lines after the checkpoint (they are logged again, and
a line torn by a crash goes); the CLI reports such errors as one message."""
import json
import shutil
from pathlib import Path

import pytest

from prefkit.cli import main
from prefkit.train.cli_train import load_run_config


def _train(out, *extra):
    module, cfg = load_run_config("configs/dpo_tiny.yaml", [f"train.output_dir={out}", "train.progress_bar=false",
                                                            "train.max_steps=4", "train.save_steps=2", *extra])
    module.run(cfg, log=lambda *a: None)


def test_resume_refuses_a_changed_config_and_truncates_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    _train(out)
    shutil.rmtree(out / "checkpoint-4")  # as if killed after step 4 was logged, before its checkpoint
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]
    (out / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 5, "loss": 0.2')  # and a torn last line
    rc = json.loads((out / "run_config.json").read_text())
    edited = json.loads(json.dumps(rc))
    edited["method"]["beta"] = 0.5
    edited["train"]["learning_rate"] = 0.01
    (out / "run_config.json").write_text(json.dumps(edited))
    assert main(["resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "configuration differs" in err and "method.beta: 0.1 -> 0.5" in err and "learning_rate" in err
    assert "Traceback" not in err
    (out / "run_config.json").write_text(json.dumps(rc))  # the original: resumes
    assert main(["resume", str(out)]) == 0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # 3 and 4 logged once, from the resumed run; the torn line is gone


def test_existing_output_dir_is_a_message_not_a_traceback(tmp_path, capsys):
    out = tmp_path / "run"
    _train(out, "train.max_steps=1", "train.save_steps=0")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(open("configs/dpo_tiny.yaml").read())
    assert main(["train", str(cfg), f"train.output_dir={out}", "train.progress_bar=false", "train.overwrite=false"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "Traceback" not in err


def test_train_cli_records_absolute_paths_so_resume_works_from_elsewhere(tmp_path, monkeypatch):
    import os

    repo = os.getcwd()
    out = tmp_path / "run"
    assert main(["train", "configs/dpo_tiny.yaml", f"train.output_dir={os.path.relpath(out)}", "train.max_steps=2",
                 "train.progress_bar=false", f"method.reference_cache_dir={os.path.relpath(tmp_path / 'cache')}"]) == 0
    rc = json.loads((out / "run_config.json").read_text())
    assert rc["data"]["train_file"] == os.path.join(repo, "examples/data/tiny_pairs.jsonl")
    assert rc["train"]["output_dir"] == str(out) and rc["method"]["reference_cache_dir"] == str(tmp_path / "cache")
    monkeypatch.chdir(tmp_path)  # somewhere else
    assert main(["resume", str(out)]) == 0


def test_train_without_arguments_asks_for_the_config_only(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "required: config" in err and "overrides" not in err.split("error:")[1]  # key=value overrides are optional


def test_a_moved_run_resumes_in_its_new_folder_and_new_fields_are_no_difference(tmp_path, capsys):
    """`prefkit resume DIR` continues the run in DIR, also after the folder was moved (run_config.json records the
    old absolute path); a config field added to prefkit after the run started (absent from the checkpoint's record
    and run_config.json) takes its default and is not a changed configuration."""
    old = tmp_path / "old"
    _train(old)
    shutil.rmtree(old / "checkpoint-4")
    new = tmp_path / "moved"
    shutil.move(str(old), str(new))
    ck = new / "checkpoint-2" / "trainer_state.json"
    state = json.loads(ck.read_text())
    del state["run_config"]["train"]["torch_compile"]  # as written before the field existed
    ck.write_text(json.dumps(state))
    from prefkit.train import checkpoint as ckpt_io
    tmp = shutil.move(str(ck.parent), str(tmp_path / "ck.tmp"))
    ckpt_io.finalize(Path(tmp), ck.parent, {"global_step": 2})  # its manifest, as that version wrote it
    rc = json.loads((new / "run_config.json").read_text())
    del rc["train"]["torch_compile"]
    (new / "run_config.json").write_text(json.dumps(rc))
    assert main(["resume", str(new)]) == 0, capsys.readouterr().err
    assert (new / "checkpoint-4").is_dir() and not old.exists()
    assert [json.loads(x)["step"] for x in (new / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_config_differences_skip_only_new_fields_of_existing_sections():
    from prefkit.train.checkpoint import config_differences

    saved = {"run": {"model": {"lora": None, "init_config": {"hidden_size": 16}}}, "train": {"learning_rate": 1.0}}
    now = {"run": {"model": {"lora": {"r": 8}, "init_config": {"hidden_size": 16, "rope_theta": 1e6}}},
           "train": {"learning_rate": 1.0, "torch_compile": False}}
    assert config_differences(saved, now) == [("model.init_config.rope_theta", None, 1e6), ("model.lora.r", None, 8)]
    del now["run"]["model"]["init_config"]["rope_theta"]
    now["run"]["model"]["lora"] = None
    assert config_differences(saved, now) == []  # train.torch_compile: a field added since, at its default


def test_resume_moves_recorded_paths_inside_the_run_folder():
    from prefkit.train.cli_resume import _moved

    rc = {"train": {"output_dir": "/a/run"}, "pairs": {"out_dir": "/a/run/pairs"}, "data": {"train_file": "/a/runs.jsonl"}}
    assert _moved(rc, "/a/run", "/b/new") == {"train": {"output_dir": "/b/new"}, "pairs": {"out_dir": "/b/new/pairs"},
                                              "data": {"train_file": "/a/runs.jsonl"}}
