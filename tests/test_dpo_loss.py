"""dpo_loss: hand-derived values, ln 2 at policy == reference, gradients against a naive implementation."""
import math

import pytest
import torch

from prefkit.losses import dpo_loss


def test_sigmoid_hand_value():
    # pc=-1, pr=-3, rc=-2, rr=-2 -> chosen ratio +1, rejected ratio -1, h = 2; beta = 0.5 -> beta*h = 1
    # loss = -log sigmoid(1) = log(1 + e^-1) = 0.3132617
    losses, rc, rr = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    assert losses.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)
    assert losses.item() == pytest.approx(0.3132617, abs=1e-6)
    assert rc.item() == pytest.approx(0.5) and rr.item() == pytest.approx(-0.5)


def test_ipo_hand_value():
    # one token each: per-token ratios +1 and -1, h_avg = 2, beta = 0.5 -> (2 - 1/(2*0.5))^2 = (2 - 1)^2 = 1
    one = torch.tensor([1])
    args = (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
    assert dpo_loss(*args, beta=0.5, kind="ipo", chosen_n_tokens=one, rejected_n_tokens=one)[0].item() == pytest.approx(1.0)
    # chosen 4 tokens, rejected 2: per-token ratios +1/4 and -1/2, h_avg = 0.75 -> (0.75 - 1)^2 = 0.0625
    losses, rc, rr = dpo_loss(*args, beta=0.5, kind="ipo", chosen_n_tokens=torch.tensor([4]),
                              rejected_n_tokens=torch.tensor([2]))
    assert losses.item() == pytest.approx(0.0625)
    assert (rc.item(), rr.item()) == pytest.approx((0.5, -0.5))  # rewards stay beta x summed log-ratios
    with pytest.raises(ValueError, match="n_tokens"):
        dpo_loss(*args, beta=0.5, kind="ipo")


def test_ipo_equals_trl_on_unequal_lengths():
    """TRL's loss_type='ipo' (dpo_trainer.py: 'normalize by the number of completion tokens'), by hand: beta 0.1,
    chosen 3 tokens with log-ratio 0.6, rejected 40 tokens with log-ratio -2.0 -> (0.2 + 0.05 - 5)^2 = 22.5625."""
    losses, _, _ = dpo_loss(torch.tensor([-10.4]), torch.tensor([-52.0]), torch.tensor([-11.0]), torch.tensor([-50.0]),
                            beta=0.1, kind="ipo", chosen_n_tokens=torch.tensor([3]), rejected_n_tokens=torch.tensor([40]))
    assert losses.item() == pytest.approx(22.5625, rel=1e-5)


def test_hinge_hand_value():
    # h = 2, beta = 0.25 -> relu(1 - 0.5) = 0.5 ; beta = 1 -> relu(1 - 2) = 0
    args = (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
    assert dpo_loss(*args, beta=0.25, kind="hinge")[0].item() == pytest.approx(0.5)
    assert dpo_loss(*args, beta=1.0, kind="hinge")[0].item() == 0.0


def test_label_smoothing_hand_value():
    # beta*h = 1, ls = 0.1: 0.9 * log(1+e^-1) + 0.1 * log(1+e^1) = 0.9*0.3132617 + 0.1*1.3132617 = 0.4132617
    losses, _, _ = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]),
                            beta=0.5, label_smoothing=0.1)
    assert losses.item() == pytest.approx(0.4132617, abs=1e-6)


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.4, 5.0])
def test_ln2_when_policy_equals_reference(beta):
    lp = torch.randn(16) * 30
    lr = torch.randn(16) * 30
    losses, rc, rr = dpo_loss(lp, lr, lp.clone(), lr.clone(), beta=beta)
    assert torch.allclose(losses, torch.full((16,), math.log(2.0)), atol=1e-7)
    assert losses[0].item() == pytest.approx(0.6931472, abs=1e-7)
    assert torch.all(rc == 0) and torch.all(rr == 0)


def _naive(pc, pr, rc, rr, beta, kind, ls, nc, nr):
    out = []
    for a, b, c, d, n_c, n_r in zip(pc, pr, rc, rr, nc, nr):
        h = (a - c) - (b - d)
        if kind == "sigmoid":
            out.append(-(1 - ls) * torch.log(1 / (1 + torch.exp(-beta * h))) - ls * torch.log(1 / (1 + torch.exp(beta * h))))
        elif kind == "ipo":
            out.append(((a - c) / n_c - (b - d) / n_r - 1 / (2 * beta)) ** 2)
        else:
            out.append(torch.clamp(1 - beta * h, min=0))
    return torch.stack(out)


@pytest.mark.parametrize("kind,ls", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0), ("hinge", 0.0)])
def test_gradients_match_naive(kind, ls):
    torch.manual_seed(0)
    base = [torch.randn(8, dtype=torch.float64) for _ in range(4)]
    a = [t.clone().requires_grad_() for t in base]
    b = [t.clone().requires_grad_() for t in base]
    nc, nr = torch.randint(1, 50, (8,)), torch.randint(1, 50, (8,))
    fast = dpo_loss(*a, beta=0.3, kind=kind, label_smoothing=ls, chosen_n_tokens=nc, rejected_n_tokens=nr)[0]
    slow = _naive(*b, 0.3, kind, ls, nc, nr)
    assert torch.allclose(fast, slow, atol=1e-10)
    fast.sum().backward()
    slow.sum().backward()
    for x, y in zip(a, b):
        assert torch.allclose(x.grad, y.grad, atol=1e-10)


def test_rejects_bad_arguments():
    t = torch.zeros(2)
    with pytest.raises(ValueError, match="unknown kind"):
        dpo_loss(t, t, t, t, kind="nope")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(t, t, t, t, kind="ipo", label_smoothing=0.1)
