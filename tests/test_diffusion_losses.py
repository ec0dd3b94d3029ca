"""Diffusion-DPO and RankDPO losses: hand-derived values, ln 2 at initialisation, gradients vs a naive loop."""
import math

import pytest
import torch

import prefkit.losses.diffusion as dl
from prefkit.losses import diffusion_dpo_loss, ranked_diffusion_dpo_loss

LN2 = math.log(2)


def test_diffusion_dpo_hand_value():
    # model_diff = 0.10 - 0.20 = -0.1, ref_diff = 0.15 - 0.15 = 0, logit = -(10/2) * (-0.1 - 0) = 0.5
    # loss = -log sigmoid(0.5) = log(1 + e^-0.5) = 0.4740770
    losses, acc = diffusion_dpo_loss(torch.tensor([0.10]), torch.tensor([0.20]), torch.tensor([0.15]),
                                     torch.tensor([0.15]), beta=10.0)
    assert losses.item() == pytest.approx(0.4740770, abs=1e-6)
    assert acc.item() == 1.0


def test_diffusion_dpo_ln2_at_init_and_sign():
    m = torch.tensor([0.3, 0.1, 0.7])
    l = torch.tensor([0.2, 0.4, 0.7])
    losses, acc = diffusion_dpo_loss(m, l, m.clone(), l.clone())
    assert torch.allclose(losses, torch.full((3,), LN2))
    assert torch.equal(acc, torch.full((3,), 0.5))  # exact ties count one half
    # the policy making the loser's error larger than the reference did -> correct direction, loss < ln 2
    losses, acc = diffusion_dpo_loss(m, l + 1e-3, m, l)
    assert (losses < LN2).all() and (acc == 1).all()


def _naive_dpo(mw, ml, rw, rl, beta):
    out = []
    for a, b, c, d in zip(mw, ml, rw, rl):
        z = -(beta / 2) * ((a - b) - (c - d))
        out.append(torch.log1p(torch.exp(-z)))
    return torch.stack(out)


def test_diffusion_dpo_gradient_matches_naive():
    g = torch.Generator().manual_seed(0)
    mw, ml = (torch.rand(5, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
    rw, rl = torch.rand(5, generator=g, dtype=torch.float64), torch.rand(5, generator=g, dtype=torch.float64)
    beta = 7.0
    a, _ = diffusion_dpo_loss(mw, ml, rw, rl, beta=beta)
    ga = torch.autograd.grad(a.sum(), (mw, ml))
    b = _naive_dpo(mw, ml, rw, rl, beta)
    gb = torch.autograd.grad(b.sum(), (mw, ml))
    assert torch.allclose(a, b)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y)


def test_diffusion_dpo_rejects_bad_shapes():
    with pytest.raises(ValueError, match="four"):
        diffusion_dpo_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))


def test_ranked_hand_value_lambda():
    # rewards r = -10 * (mse - 0.2) = [1, 0, -1]; ranks 1, 2, 3; G = 2^psi = [2, sqrt2, 1]; 1/D = 1/ln2, 1/ln3, 1/ln4
    # D01 = (2 - 1.414214)(1.442695 - 0.910239) = 0.311905, nll = log(1+e^-1) = 0.313262
    # D02 = (2 - 1)(1.442695 - 0.721348)        = 0.721348, nll = log(1+e^-2) = 0.126928
    # D12 = (1.414214 - 1)(0.910239 - 0.721348) = 0.078242, nll = 0.313262
    # L = 0.311905*0.313262 + 0.721348*0.126928 + 0.078242*0.313262 = 0.213777
    losses, acc = ranked_diffusion_dpo_loss(torch.tensor([[0.1, 0.2, 0.3]]), torch.full((1, 3), 0.2),
                                            torch.tensor([[1.0, 0.5, 0.0]]), beta=10.0)
    assert losses.item() == pytest.approx(0.213777, abs=1e-5)
    assert acc.item() == 1.0


def test_ranked_uniform_k2_equals_diffusion_dpo_with_double_beta():
    g = torch.Generator().manual_seed(1)
    m, r = torch.rand(4, 2, generator=g), torch.rand(4, 2, generator=g)
    scores = torch.tensor([[1.0, 0.0]] * 4)
    a, acc_a = ranked_diffusion_dpo_loss(m, r, scores, beta=300.0, weighting="uniform")
    b, acc_b = diffusion_dpo_loss(m[:, 0], m[:, 1], r[:, 0], r[:, 1], beta=600.0)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.equal(acc_a, acc_b)


def test_ranked_at_init_ln2_uniform_and_weighted_lambda():
    m = torch.tensor([[0.3, 0.1, 0.2, 0.5]])
    psi = torch.tensor([[0.0, 1.0, 2 / 3, 1 / 3]])
    uni, acc = ranked_diffusion_dpo_loss(m, m.clone(), psi, beta=5.0, weighting="uniform")
    assert uni.item() == pytest.approx(LN2, abs=1e-6)
    assert acc.item() == 0.5
    lam, _ = ranked_diffusion_dpo_loss(m, m.clone(), psi, beta=5.0, weighting="lambda")
    # all rewards 0: ranks follow the index order (stable sort), so item k has rank k+1
    inv_d = [1 / math.log(2 + k) for k in range(4)]
    p = psi[0].tolist()
    total = sum(abs(2 ** p[i] - 2 ** p[j]) * abs(inv_d[i] - inv_d[j]) for i in range(4) for j in range(4) if p[i] > p[j])
    assert lam.item() == pytest.approx(LN2 * total, abs=1e-6)


def test_ranked_mask_equals_shorter_list():
    m, r = torch.tensor([[0.1, 0.4, 0.3, 9.0]]), torch.tensor([[0.2, 0.2, 0.25, -3.0]])
    psi = torch.tensor([[1.0, 0.0, 0.5, 0.7]])
    mask = torch.tensor([[True, True, True, False]])
    full, _ = ranked_diffusion_dpo_loss(m, r, psi, beta=20.0, mask=mask)
    short, _ = ranked_diffusion_dpo_loss(m[:, :3], r[:, :3], psi[:, :3], beta=20.0)
    assert torch.allclose(full, short)


def test_ranked_gradient_matches_naive_pairwise_loop():
    g = torch.Generator().manual_seed(2)
    m = torch.rand(2, 4, generator=g, dtype=torch.float64).requires_grad_()
    r = torch.rand(2, 4, generator=g, dtype=torch.float64)
    psi = torch.tensor([[0.0, 1.0, 0.5, 0.25], [0.2, 0.2, 0.9, 0.1]], dtype=torch.float64)
    beta = 3.0
    a, _ = ranked_diffusion_dpo_loss(m, r, psi, beta=beta, weighting="uniform")
    (ga,) = torch.autograd.grad(a.sum(), m)
    naive = []
    for b in range(2):
        terms = []
        for i in range(4):
            for j in range(4):
                if psi[b, i] > psi[b, j]:
                    s_i, s_j = m[b, i] - r[b, i], m[b, j] - r[b, j]
                    terms.append(torch.log1p(torch.exp(beta * (s_i - s_j))))  # -log sigmoid(-beta (s_i - s_j))
        naive.append(torch.stack(terms).mean())
    naive = torch.stack(naive)
    (gb,) = torch.autograd.grad(naive.sum(), m)
    assert torch.allclose(a, naive) and torch.allclose(ga, gb)


def test_ranked_reuses_the_one_listwise_loss(monkeypatch):
    calls = []
    real = dl.listwise_logistic_loss

    def spy(rewards, labels, **kw):
        calls.append((rewards.detach().clone(), kw))
        return real(rewards, labels, **kw)

    monkeypatch.setattr(dl, "listwise_logistic_loss", spy)
    m, r = torch.tensor([[0.1, 0.3]]), torch.tensor([[0.2, 0.2]])
    ranked_diffusion_dpo_loss(m, r, torch.tensor([[1.0, 0.0]]), beta=10.0, weighting="uniform")
    assert len(calls) == 1
    assert torch.allclose(calls[0][0], torch.tensor([[1.0, -1.0]]))  # rewards = -beta (mse_theta - mse_ref)
    assert calls[0][1]["weighting"] == "uniform"


def test_ranked_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        ranked_diffusion_dpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), beta=1.0)
