"""The loop's accumulation and logging windows at an epoch's end: the last, partial accumulation window's
gradient is the mean over its own micro-batches (as transformers' Trainer computes it, not k / grad_accum_steps
of it), and a logging window that spans the end of an epoch keeps every micro-batch's loss, NaN check included."""
import pytest
import torch

from prefkit.train import loop
from prefkit.train.config import TrainConfig

X = torch.arange(1, 6, dtype=torch.float32)[:, None]  # 5 rows: x = 1..5


class Quadratic(torch.nn.Module):
    """loss = mean(0.5 w^2 x^2) at w = 1: d loss / dw = mean(x^2)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1, 1))

    def forward(self, batch):
        loss = (batch["x"] @ self.w.T).pow(2).mean() * 0.5
        return loss, {}

    def save_pretrained(self, path):
        pass


def _collate(rows):
    return {"x": torch.stack([r["x"] for r in rows])}


@pytest.mark.parametrize("batch_size,ga", [(1, 2), (2, 2), (1, 3)])
def test_partial_accumulation_window_gets_the_mean_gradient(tmp_path, monkeypatch, batch_size, ga):
    grads = []

    class Recording(torch.optim.AdamW):
        def step(self, closure=None):
            grads.append(self.param_groups[0]["params"][0].grad.item())
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    cfg = TrainConfig(output_dir=str(tmp_path / "r"), learning_rate=1e-12, num_epochs=1, batch_size=batch_size,
                      grad_accum_steps=ga, max_grad_norm=0.0, warmup_ratio=0.0, lr_scheduler="constant",
                      progress_bar=False)
    trainer = loop.Trainer(cfg, Quadratic(), [{"x": X[i]} for i in range(5)], _collate, log=lambda *a: None)
    trainer._save = lambda *a, **k: None
    trainer.train()
    xs = X[list(iter(loop.EpochPermutationSampler(5, 0))), 0]  # the epoch's order
    per_step = batch_size * ga
    want = [float((xs[i : i + per_step] ** 2).mean()) for i in range(0, 5, per_step)]
    # batch_size 2 makes the last micro-batch a single row: the mean over micro-batches is what transformers
    # computes too (each micro-batch's loss is already its own mean)
    if batch_size == 2:
        want[-1] = float((xs[4:] ** 2).mean())
    assert grads == pytest.approx(want, rel=1e-6)


class Counting(torch.nn.Module):
    """The loss of call k is k (or NaN at call `nan_at`)."""

    def __init__(self, nan_at=None):
        super().__init__()
        self.w, self.calls, self.nan_at = torch.nn.Parameter(torch.zeros(1)), 0, nan_at

    def forward(self, batch):
        self.calls += 1
        v = torch.tensor(float("nan") if self.calls == self.nan_at else float(self.calls))
        return self.w.sum() * 0 + v, {}

    def save_pretrained(self, path):
        pass


def _counting_trainer(tmp_path, nan_at=None):
    cfg = TrainConfig(output_dir=str(tmp_path / f"c{nan_at}"), learning_rate=1e-3, num_epochs=2, batch_size=1,
                      logging_steps=2, max_grad_norm=0.0, warmup_ratio=0.0, lr_scheduler="constant", progress_bar=False)
    trainer = loop.Trainer(cfg, Counting(nan_at), [{"x": torch.zeros(1)}] * 3, _collate, log=lambda *a: None)
    trainer._save = lambda *a, **k: None
    return trainer


def test_a_logging_window_spans_the_epoch_end(tmp_path):
    res = _counting_trainer(tmp_path).train()  # 3 steps per epoch, logged every 2: step 4 = calls 3 and 4
    assert [(r["step"], r["loss"]) for r in res.history] == [(2, 1.5), (4, 3.5), (6, 5.5)]


def test_a_nan_at_the_end_of_an_epoch_still_stops_training(tmp_path):
    with pytest.raises(loop.NonFiniteLossError, match="optimizer step 3"):
        _counting_trainer(tmp_path, nan_at=3).train()


def test_the_schedule_does_not_advance_on_a_step_the_grad_scaler_skipped(tmp_path, monkeypatch):
    """fp16: GradScaler skips an optimizer step whose gradients overflowed; the LR schedule must not move then
    (transformers' Trainer checks optimizer_step_was_skipped too). Simulated: this CPU has no fp16 scaler."""
    from accelerate import Accelerator

    calls = iter([True, False, False, False])
    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped", property(lambda self: next(calls)))
    cfg = TrainConfig(output_dir=str(tmp_path / "s"), learning_rate=1.0, max_steps=4, batch_size=1,
                      warmup_ratio=0.0, lr_scheduler="linear", max_grad_norm=0.0, progress_bar=False)
    trainer = loop.Trainer(cfg, Quadratic(), [{"x": X[i]} for i in range(5)], _collate, log=lambda *a: None)
    trainer._save = lambda *a, **k: None
    res = trainer.train()
    # linear decay over 4 steps; `learning_rate` is the rate each step used (transformers' convention): 1 at step 1,
    # still 1 at step 2 because the scheduler did not advance after the skipped step 1, then 0.75 and 0.5
    assert [r["learning_rate"] for r in res.history] == pytest.approx([1.0, 1.0, 0.75, 0.5])
    assert all(r["grad_norm"] > 0 for r in res.history)  # measured also with clipping off (max_grad_norm 0)


def test_eval_metrics_are_means_over_examples_not_batches(tmp_path):
    """Eval batches of unequal size (3 rows at batch size 2: 2 + 1) are weighted by their rows, as TRL's eval_loss."""
    class Rows(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, batch):
            v = batch["v"]  # (B,)
            return (v + self.w).mean(), {"v": v.mean()}

    def collate(items):
        return {"v": torch.tensor([float(x["v"]) for x in items]), "mask": torch.ones(len(items), 1)}

    cfg = TrainConfig(output_dir=str(tmp_path / "e"), learning_rate=1e-9, max_steps=1, batch_size=2, warmup_ratio=0.0,
                      progress_bar=False)
    trainer = loop.Trainer(cfg, Rows(), [{"v": 0.0}] * 2, collate, eval_dataset=[{"v": 1.0}, {"v": 2.0}, {"v": 6.0}],
                           log=lambda *a: None)
    trainer._save = lambda *a, **k: None
    res = trainer.train()
    ev = [r for r in res.history if "eval_loss" in r][0]
    assert ev["eval_loss"] == pytest.approx(3.0, abs=1e-6) and ev["eval_v"] == pytest.approx(3.0, abs=1e-6)
