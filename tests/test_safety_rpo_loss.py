"""DPO + chosen-NLL (RPO, Pang et al. 2024): hand-derived values, ln 2 + alpha * NLL at policy == reference,
gradients against a naive per-example implementation, and the objective (PairwiseDPO with rpo_alpha) that
the DPO / Step-DPO recipe and the Egida recipe use."""
import math

import pytest
import torch

from prefkit.losses.rpo import dpo_nll_loss
from prefkit.methods.objectives import PairwiseDPO


def test_policy_equals_reference_gives_ln2_plus_alpha_nll():
    pc = torch.tensor([-6.0, -10.0])
    pr = torch.tensor([-1.0, -2.0])
    n = torch.tensor([3, 5])
    losses, rc, rr, nll = dpo_nll_loss(pc, pr, pc.clone(), pr.clone(), n, beta=0.1, alpha=0.5)
    # nll = -(-6)/3 = 2 and -(-10)/5 = 2; loss = ln 2 + 0.5 * 2
    assert nll.tolist() == [2.0, 2.0]
    assert losses.tolist() == pytest.approx([math.log(2) + 1.0] * 2, abs=1e-6)
    assert rc.tolist() == [0.0, 0.0] and rr.tolist() == [0.0, 0.0]


def test_hand_derived_value():
    # h = (-4 - -6) - (-3 - -1) = 2 - (-2) = 4; beta*h = 0.4; -log sigmoid(0.4) = log(1 + e^-0.4) = 0.513015
    # nll = 4 / 2 = 2; alpha = 0.25 -> total 0.513015 + 0.5
    losses, rc, rr, nll = dpo_nll_loss(torch.tensor([-4.0]), torch.tensor([-3.0]), torch.tensor([-6.0]),
                                       torch.tensor([-1.0]), torch.tensor([2]), beta=0.1, alpha=0.25)
    assert losses.item() == pytest.approx(math.log1p(math.exp(-0.4)) + 0.5, abs=1e-6)
    assert rc.item() == pytest.approx(0.2) and rr.item() == pytest.approx(-0.2)
    # alpha = 0 is plain DPO
    assert dpo_nll_loss(torch.tensor([-4.0]), torch.tensor([-3.0]), torch.tensor([-6.0]), torch.tensor([-1.0]),
                        torch.tensor([2]), beta=0.1, alpha=0.0)[0].item() == pytest.approx(math.log1p(math.exp(-0.4)))
    with pytest.raises(ValueError, match="alpha"):
        dpo_nll_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.ones(1), beta=0.1, alpha=-1)


def test_gradients_match_a_naive_implementation():
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(5, dtype=torch.float64) * 3 for _ in range(4))
    n = torch.tensor([1, 2, 3, 4, 5])
    a = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    dpo_nll_loss(a[0], a[1], rc, rr, n, beta=0.3, alpha=0.7)[0].sum().backward()
    b = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    total = 0
    for i in range(5):
        h = (b[0][i] - rc[i]) - (b[1][i] - rr[i])
        total = total + torch.log1p(torch.exp(-0.3 * h)) + 0.7 * (-b[0][i] / n[i])
    total.backward()
    assert torch.allclose(a[0].grad, b[0].grad) and torch.allclose(a[1].grad, b[1].grad)


def test_objective_metrics():
    obj = PairwiseDPO(beta=0.1, rpo_alpha=1.0)
    assert obj.needs_n_tokens and not PairwiseDPO(beta=0.1).needs_n_tokens
    logps = torch.tensor([[-6.0, -1.0]])
    args = (logps, logps.clone(), torch.tensor([[1.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool))
    loss, m = obj(*args, torch.tensor([[3, 1]]))
    assert loss.item() == pytest.approx(math.log(2) + 2.0, abs=1e-6)  # ln 2 + 1.0 x (6 / 3)
    assert m["nll_loss"].item() == 2.0 and m["rewards/accuracies"].item() == 0.0
    plain_loss, plain_m = PairwiseDPO(beta=0.1)(*args)
    assert plain_loss.item() == pytest.approx(math.log(2), abs=1e-6) and "nll_loss" not in plain_m
    with pytest.raises(ValueError, match="n_tokens"):
        obj(*args)
    with pytest.raises(ValueError, match="rpo_alpha"):
        PairwiseDPO(rpo_alpha=-0.1)
