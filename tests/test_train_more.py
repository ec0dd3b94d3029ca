"""Trainer.train_more: one run fed several datasets in turn keeps the AdamW state, the LR schedule, the step count,
the metrics file and the checkpoint logic (what SPO's sampling rounds need)."""
import copy
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

from prefkit.train.config import TrainConfig
from prefkit.train.loop import OutputDirExistsError, Trainer


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3, 1)

    def forward(self, batch):
        loss = ((self.lin(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()
        return loss, {"probe": loss.detach()}

    def save_pretrained(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), Path(path) / "weights.pt")


def _data(seed: int, n: int = 6) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return [{"x": x[i], "y": x[i].sum() + 1.0} for i in range(n)]


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(output_dir=str(tmp_path / "run"), learning_rate=0.05, batch_size=16, lr_scheduler="constant",
                warmup_ratio=0.0, max_grad_norm=0.0, progress_bar=False)
    return TrainConfig(**{**base, **kw})


def test_train_more_keeps_optimizer_state_and_step_count(tmp_path):
    module = _Linear()
    trainer = Trainer(_cfg(tmp_path), module, None, default_collate, log=lambda *a: None)
    r1 = trainer.train_more(_data(1), steps=1)  # full batch: one optimizer step per call
    assert r1.global_step == trainer.global_step == 1
    opt = trainer.optimizer
    state1 = copy.deepcopy(opt.state_dict()["state"])
    # the gradient the second call's step will see: data B at the parameters after the first call
    probe = copy.deepcopy(module)
    data_b = _data(2)
    probe(default_collate(data_b))[0].backward()
    grads = [p.grad for p in (probe.lin.weight, probe.lin.bias)]

    r2 = trainer.train_more(data_b, steps=1)
    assert r2.global_step == trainer.global_step == 2
    assert trainer.optimizer is opt
    state2 = opt.state_dict()["state"]
    beta1 = trainer.cfg.adam_beta1
    for i, g in enumerate(grads):  # decay + no-decay groups: weight (index 0), bias (index 1)
        assert int(state2[i]["step"]) == 2
        # exp_avg continued from the first call's moment, not restarted at zero
        assert torch.allclose(state2[i]["exp_avg"], beta1 * state1[i]["exp_avg"] + (1 - beta1) * g, atol=1e-7)
        assert not torch.allclose(state2[i]["exp_avg"], (1 - beta1) * g, atol=1e-7)
    assert trainer.scheduler.last_epoch == 2
    steps = [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert steps == [1, 2]
    # checkpoint logic as in train(): one at the end of each call, OUTPUT/model refreshed from the last
    assert r2.final_checkpoint == str(tmp_path / "run" / "checkpoint-2")
    assert (tmp_path / "run" / "checkpoint-2" / "state").is_dir()
    saved = torch.load(tmp_path / "run" / "model" / "weights.pt")
    assert torch.equal(saved["lin.weight"], module.lin.weight.detach())


def test_train_more_lengths_seeds_and_save_flag(tmp_path):
    trainer = Trainer(_cfg(tmp_path, batch_size=2, num_epochs=2, save_total_limit=5), _Linear(), None, default_collate,
                      log=lambda *a: None)
    r = trainer.train_more(_data(1, n=6), save=False)  # num_epochs passes: 2 x 3 batches
    assert r.global_step == 6 and r.final_checkpoint is None
    r = trainer.train_more(_data(2, n=4), num_epochs=1, save=False)  # 2 batches
    assert r.global_step == 8 and trainer.sampler.seed == trainer.cfg.seed + 1
    r = trainer.train_more(_data(3, n=4), steps=3, seed=7, save=False)
    assert r.global_step == 11 and trainer.sampler.seed == 7
    assert int(next(iter(trainer.optimizer.state_dict()["state"].values()))["step"]) == 11
    assert trainer.accelerator._dataloaders == [trainer.dl]  # finished rounds' loaders (and their data) let go
    assert not list((tmp_path / "run").glob("checkpoint-*")) and not (tmp_path / "run" / "model").exists()
    assert [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl")] == list(range(1, 12))
    with pytest.raises(ValueError, match="steps"):
        trainer.train_more(_data(3), steps=0)


def test_train_more_guards_the_output_dir_like_train(tmp_path):
    Trainer(_cfg(tmp_path), _Linear(), None, default_collate, log=lambda *a: None).train_more(_data(1), steps=1)
    with pytest.raises(OutputDirExistsError):
        Trainer(_cfg(tmp_path), _Linear(), None, default_collate, log=lambda *a: None).train_more(_data(1), steps=1)
    with pytest.raises(ValueError, match="empty"):
        Trainer(_cfg(tmp_path, overwrite=True), _Linear(), None, default_collate, log=lambda *a: None).train_more([])


def test_spo_round_trainer_is_train_more_without_checkpoints(tmp_path):
    """prefkit.methods.spo.RoundTrainer (kept for experiments/spo.py) on the public train_more."""
    from prefkit.methods.spo import RoundTrainer

    for _ in range(2):  # a new run replaces an earlier one in the same folder, as before
        trainer = RoundTrainer(_cfg(tmp_path, batch_size=2), _Linear(), None, default_collate, log=lambda *a: None)
        trainer.run_round(_data(1, n=4), 1)
        assert trainer.sampler.seed == trainer.cfg.seed + 1
        r = trainer.run_round(_data(2, n=4), 2, max_steps=3)
        assert r.global_step == 5 and trainer.sampler.seed == trainer.cfg.seed + 2
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_train_more_after_train_keeps_logging_to_tensorboard(tmp_path, monkeypatch):
    """train() closes its TensorBoard writer; a later train_more opens one again instead of logging nothing."""
    import sys
    import types

    writers = []

    class FakeWriter:  # records what torch.utils.tensorboard.SummaryWriter would be given
        def __init__(self, logdir):
            self.steps, self.closed = set(), False
            writers.append(self)

        def add_scalar(self, key, value, step):
            self.steps.add(step)

        def flush(self):
            pass

        def close(self):
            self.closed = True

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    trainer = Trainer(_cfg(tmp_path, batch_size=2, tensorboard=True), _Linear(), _data(1, n=4), default_collate,
                      log=lambda *a: None)
    trainer.train()  # 2 steps
    trainer.train_more(_data(2, n=4), steps=2, save=False)
    assert len(writers) == 2 and writers[0].closed
    assert writers[0].steps == {1, 2} and writers[1].steps == {3, 4}
