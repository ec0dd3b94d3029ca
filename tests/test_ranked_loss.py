"""ranked_dpo_loss: hand-derived values, DPO equivalence, init value, masks, gradients vs a naive loop."""
import math

import pytest
import torch
import torch.nn.functional as F

from prefkit.losses import dpo_loss, ranked_dpo_loss

LN2 = math.log(2.0)


def _nll(x: float) -> float:
    """-log sigmoid(x) = log(1 + e^-x)."""
    return math.log1p(math.exp(-x))


def test_uniform_equals_dpo_for_k2():
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, dtype=torch.float64) * 3 for _ in range(4))
    want, want_c, want_r = dpo_loss(pc, pr, rc, rr, beta=0.3)
    scores = torch.tensor([[1.0, 0.0]] * 6, dtype=torch.float64)  # chosen first
    got, rewards = ranked_dpo_loss(torch.stack([pc, pr], 1), torch.stack([rc, rr], 1), scores,
                                   beta=0.3, weighting="uniform")
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(rewards, torch.stack([want_c, want_r], 1))
    # the order of the items in the list does not matter, only the scores
    got_swapped, _ = ranked_dpo_loss(torch.stack([pr, pc], 1), torch.stack([rr, rc], 1), scores.flip(1),
                                     beta=0.3, weighting="uniform")
    torch.testing.assert_close(got_swapped, want)


def test_hand_derived_k3():
    """beta = 0.5, policy (-1, -3, -2), reference (-2, -2, -2) -> s = (0.5, -0.5, 0); scores (2, 1, 0).

    Ranks under s: item0 1st, item2 2nd, item1 3rd -> tau = (1, 3, 2); 1/log(1+tau) = (1/ln2, 1/ln4, 1/ln3).
    Gains 2^psi = (4, 2, 1). Preferred pairs (0,1), (0,2), (1,2):
      D01 = |4-2| |1/ln2 - 1/ln4| = 2 * 1/(2 ln2) = 1/ln2          margin s0-s1 = 1.0
      D02 = |4-1| |1/ln2 - 1/ln3|                                   margin s0-s2 = 0.5
      D12 = |2-1| |1/ln4 - 1/ln3|                                   margin s1-s2 = -0.5
    lambda  L = D01 log(1+e^-1) + D02 log(1+e^-0.5) + D12 log(1+e^0.5)  = 1.393211...
    uniform L = (log(1+e^-1) + log(1+e^-0.5) + log(1+e^0.5)) / 3       = 0.587139...
    """
    pol = torch.tensor([[-1.0, -3.0, -2.0]], dtype=torch.float64)
    ref = torch.tensor([[-2.0, -2.0, -2.0]], dtype=torch.float64)
    sc = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)
    ln2, ln3, ln4 = math.log(2), math.log(3), math.log(4)
    d01, d02, d12 = 1 / ln2, 3 * (1 / ln2 - 1 / ln3), 1 / ln3 - 1 / ln4
    want_lambda = d01 * _nll(1.0) + d02 * _nll(0.5) + d12 * _nll(-0.5)
    want_uniform = (_nll(1.0) + _nll(0.5) + _nll(-0.5)) / 3
    assert want_lambda == pytest.approx(1.393211, abs=1e-6)
    assert want_uniform == pytest.approx(0.587139, abs=1e-6)
    lam, rewards = ranked_dpo_loss(pol, ref, sc, beta=0.5, weighting="lambda")
    uni, _ = ranked_dpo_loss(pol, ref, sc, beta=0.5, weighting="uniform")
    assert lam.shape == (1,) and rewards.shape == (1, 3)
    assert lam.item() == pytest.approx(want_lambda, abs=1e-6)  # lambda weights are computed in float32
    assert uni.item() == pytest.approx(want_uniform, abs=1e-12)
    torch.testing.assert_close(rewards, torch.tensor([[0.5, -0.5, 0.0]], dtype=torch.float64))


def test_policy_equals_reference():
    """Every s_i = 0: each pair costs ln 2. Uniform -> ln 2. Lambda -> ln 2 * sum of Delta, tau = list order.

    scores (2, 1, 0), tau (1, 2, 3): D01 = 2(1/ln2 - 1/ln3), D02 = 3(1/ln2 - 1/ln4), D12 = 1/ln3 - 1/ln4.
    """
    lp = torch.tensor([[-5.0, -7.0, -3.0], [-1.0, -2.0, -9.0]])
    sc = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    uni, rewards = ranked_dpo_loss(lp, lp.clone(), sc, beta=0.1, weighting="uniform")
    torch.testing.assert_close(uni, torch.full((2,), LN2))
    assert torch.all(rewards == 0)
    ln2, ln3, ln4 = math.log(2), math.log(3), math.log(4)
    delta_sum = 2 * (1 / ln2 - 1 / ln3) + 3 * (1 / ln2 - 1 / ln4) + (1 / ln3 - 1 / ln4)
    lam, _ = ranked_dpo_loss(lp, lp.clone(), sc, beta=0.1, weighting="lambda")
    torch.testing.assert_close(lam, torch.full((2,), LN2 * delta_sum))


def test_mask_matches_shorter_list_and_ignores_garbage():
    torch.manual_seed(1)
    pol3, ref3 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    sc3 = torch.tensor([[3.0, 1.0, 2.0]] * 4, dtype=torch.float64)
    mask = torch.tensor([[True, True, False]] * 4)
    # padded slot holds NaN / inf: must not reach the loss or the gradient
    pol_pad = pol3.clone()
    pol_pad[:, 2] = float("nan")
    ref_pad = ref3.clone()
    ref_pad[:, 2] = float("inf")
    sc_pad = sc3.clone()
    sc_pad[:, 2] = float("nan")
    pol_pad.requires_grad_(True)
    for weighting in ("lambda", "uniform"):
        got, rewards = ranked_dpo_loss(pol_pad, ref_pad, sc_pad, beta=0.2, weighting=weighting, mask=mask)
        want, _ = ranked_dpo_loss(pol3[:, :2], ref3[:, :2], sc3[:, :2], beta=0.2, weighting=weighting)
        torch.testing.assert_close(got, want)
        assert torch.all(rewards[:, 2] == 0)
        (g,) = torch.autograd.grad(got.sum(), pol_pad)
        assert torch.isfinite(g).all() and torch.all(g[:, 2] == 0)


def _naive_ranked(pol, ref, scores, mask, beta, weighting):
    """Per-list Python loops; ranks from sorted(), Delta from the formula, no tensor broadcasting."""
    out = []
    for b in range(pol.shape[0]):
        items = [k for k in range(pol.shape[1]) if mask[b, k]]
        s = {k: beta * (pol[b, k] - ref[b, k]) for k in items}
        by_s = sorted(items, key=lambda k: (-float(s[k].detach()), k))  # stable ranks under the current rewards
        tau = {k: r + 1 for r, k in enumerate(by_s)}
        total, n = pol.new_zeros(()), 0
        for i in items:
            for j in items:
                if float(scores[b, i]) > float(scores[b, j]):
                    nll = -F.logsigmoid(s[i] - s[j])
                    if weighting == "lambda":
                        gain = abs(2.0 ** float(scores[b, i]) - 2.0 ** float(scores[b, j]))
                        disc = abs(1 / math.log(1 + tau[i]) - 1 / math.log(1 + tau[j]))
                        total = total + gain * disc * nll
                    else:
                        total = total + nll
                    n += 1
        out.append(total if weighting == "lambda" else total / max(n, 1))
    return torch.stack(out)


@pytest.mark.parametrize("weighting", ["lambda", "uniform"])
def test_loss_and_gradients_match_naive_loop(weighting):
    torch.manual_seed(2)
    B, K = 5, 4
    pol = (torch.randn(B, K, dtype=torch.float64) * 4).requires_grad_(True)
    ref = (torch.randn(B, K, dtype=torch.float64) * 4).requires_grad_(True)
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.5, 0.5, 1.0, 0.0], [1.0, 2.0, 3.0, 4.0],
                           [0.2, 0.9, 0.4, 0.1], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)  # ties included
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    got, _ = ranked_dpo_loss(pol, ref, scores, beta=0.7, weighting=weighting, mask=mask)
    want = _naive_ranked(pol, ref, scores, mask, 0.7, weighting)
    tol = dict(rtol=1e-6, atol=1e-6)  # the lambda weights are computed in float32
    torch.testing.assert_close(got, want, **tol)
    w = torch.arange(1, B + 1, dtype=torch.float64)  # a non-uniform upstream gradient
    g_got = torch.autograd.grad((got * w).sum(), (pol, ref))
    g_want = torch.autograd.grad((want * w).sum(), (pol, ref))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, **tol)
    assert g_got[0].abs().sum() > 0


def test_rejects_bad_shapes_and_weighting():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="same"):
        ranked_dpo_loss(x, torch.zeros(2, 4), x)
    with pytest.raises(ValueError, match="mask"):
        ranked_dpo_loss(x, x, x, mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="weighting"):
        ranked_dpo_loss(x, x, torch.tensor([[1.0, 0.0, 2.0]] * 2), weighting="dcg")
