"""SPO losses: DDIM step log-probability and the clipped step-aware preference loss."""
import math

import pytest
import torch
from diffusers import DDIMScheduler

from prefkit.losses import ddim_step_logprob, spo_step_loss
from prefkit.losses.spo import ddim_sigma, ddim_step_mean


def _scheduler(steps: int = 20) -> DDIMScheduler:
    # SD1.5's schedule: scaled_linear betas, alpha_bar_prev of the last step = alphas_cumprod[0]
    s = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1)
    s.set_timesteps(steps)
    return s


def _abars(s: DDIMScheduler, t: int) -> tuple[float, float, int]:
    prev_t = t - s.config.num_train_timesteps // s.num_inference_steps
    a_t = float(s.alphas_cumprod[t])
    a_p = float(s.alphas_cumprod[prev_t]) if prev_t >= 0 else float(s.final_alpha_cumprod)
    return a_t, a_p, prev_t


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_sigma_matches_diffusers_ddim_variance(eta):
    s = _scheduler()
    for t in s.timesteps.tolist():
        a_t, a_p, prev_t = _abars(s, t)
        expected = eta * float(s._get_variance(t, prev_t)) ** 0.5
        # diffusers computes in float32, where 1 - abar_t/abar_prev cancels near t = 0; we use float64
        assert float(ddim_sigma(a_t, a_p, eta)) == pytest.approx(expected, rel=5e-5)


def test_mean_matches_diffusers_ddim_step():
    """DDIMScheduler.step(eps, t, x_t, eta, variance_noise=z) == mu + sigma z."""
    torch.manual_seed(0)
    s = _scheduler()
    x_t, eps, z = torch.randn(3, 2, 4, 5, 5).unbind(0)
    for t in [int(s.timesteps[0]), int(s.timesteps[7]), int(s.timesteps[-1])]:
        a_t, a_p, _ = _abars(s, t)
        mu, sigma, x0 = ddim_step_mean(x_t, eps, a_t, a_p, eta=1.0)
        out = s.step(eps, t, x_t, eta=1.0, variance_noise=z)
        torch.testing.assert_close(mu + sigma * z, out.prev_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x0, out.pred_original_sample, rtol=1e-5, atol=1e-5)


def test_clipped_mean_matches_diffusers_clip_sample():
    torch.manual_seed(5)
    s = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=True, set_alpha_to_one=True)
    s.set_timesteps(10)
    x_t, eps, z = (3 * torch.randn(3, 2, 3, 4, 4)).unbind(0)
    t = int(s.timesteps[2])
    a_t, a_p, _ = _abars(s, t)
    mu, sigma, x0 = ddim_step_mean(x_t, eps, a_t, a_p, eta=1.0, clip_sample=True)
    out = s.step(eps, t, x_t, eta=1.0, variance_noise=z)
    assert float(x0.abs().max()) <= 1.0
    torch.testing.assert_close(mu + sigma * z, out.prev_sample, rtol=1e-5, atol=1e-5)


def test_logprob_equals_torch_normal_mean_over_elements():
    torch.manual_seed(1)
    s = _scheduler()
    x_t, eps, x_prev = torch.randn(3, 4, 3, 6, 6).unbind(0)
    t = int(s.timesteps[5])
    a_t, a_p, _ = _abars(s, t)
    mu, sigma, _ = ddim_step_mean(x_t, eps, a_t, a_p, eta=1.0)
    expected = torch.distributions.Normal(mu, sigma.expand_as(mu)).log_prob(x_prev).flatten(1).mean(1)
    got = ddim_step_logprob(x_prev, x_t, eps, a_t, a_p, eta=1.0)
    assert got.shape == (4,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_logprob_hand_derived_and_per_sample_schedule():
    """At x_prev == mu every element is -log sigma - 0.5 log 2 pi; a (B,) schedule matches per-row floats."""
    a_t, a_p = 0.25, 0.64
    sigma = math.sqrt((1 - 0.64) / (1 - 0.25)) * math.sqrt(1 - 0.25 / 0.64)  # = sqrt(0.48 * 0.609375)
    x_t, eps = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    mu = math.sqrt(a_p) * 1.0 / math.sqrt(a_t)  # x0_hat = x_t / 0.5 = 2, mu = 0.8 * 2 = 1.6
    assert mu == pytest.approx(1.6)
    lp = ddim_step_logprob(torch.full((1, 1, 2, 2), 1.6), x_t, eps, a_t, a_p, eta=1.0)
    assert float(lp) == pytest.approx(-math.log(sigma) - 0.5 * math.log(2 * math.pi), rel=1e-5)
    torch.manual_seed(2)
    x_t, eps, x_prev = torch.randn(3, 2, 1, 3, 3).unbind(0)
    abar_t, abar_p = torch.tensor([0.3, 0.5]), torch.tensor([0.4, 0.7])
    batched = ddim_step_logprob(x_prev, x_t, eps, abar_t, abar_p, eta=1.0)
    for i in range(2):
        row = ddim_step_logprob(x_prev[i:i + 1], x_t[i:i + 1], eps[i:i + 1], float(abar_t[i]), float(abar_p[i]), 1.0)
        torch.testing.assert_close(batched[i:i + 1], row)


def test_logprob_gradient_matches_normal_autograd():
    torch.manual_seed(3)
    x_t, x_prev = torch.randn(2, 2, 3, 4, 4).unbind(0)
    eps1 = torch.randn(2, 3, 4, 4, requires_grad=True)
    eps2 = eps1.detach().clone().requires_grad_(True)
    a_t, a_p = 0.4, 0.55
    ddim_step_logprob(x_prev, x_t, eps1, a_t, a_p, eta=1.0).sum().backward()
    sig = ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)) ** 0.5
    x0 = (x_t - (1 - a_t) ** 0.5 * eps2) / a_t**0.5
    mu = a_p**0.5 * x0 + (1 - a_p - sig**2) ** 0.5 * eps2
    torch.distributions.Normal(mu, sig).log_prob(x_prev).flatten(1).mean(1).sum().backward()
    torch.testing.assert_close(eps1.grad, eps2.grad, rtol=1e-5, atol=1e-7)


def test_step_mean_is_the_samplers_ddim_step():
    """The loss's Gaussian is prefkit.diffusion.ddim's step (the one tested against diffusers), per-row schedules too."""
    from prefkit.diffusion.ddim import ddim_step

    torch.manual_seed(4)
    x_t, eps, z = torch.randn(3, 2, 3, 4, 4).unbind(0)
    for a_t, a_p in [(0.3, 0.45), (torch.tensor([0.3, 0.5]), torch.tensor([0.45, 0.9]))]:
        mu, sigma, x0 = ddim_step_mean(x_t, eps, a_t, a_p, eta=0.8, clip_sample=True)
        st = ddim_step(x_t, eps, a_t, a_p, eta=0.8, noise=z, clip_sample=True)
        assert torch.equal(mu, st.mean) and torch.equal(sigma, st.sigma) and torch.equal(x0, st.x0_hat)
        assert torch.equal(st.prev, mu + sigma * z)
    with pytest.raises(ValueError, match="eta"):
        ddim_step_mean(x_t, eps, 0.3, 0.45, eta=0.0)


def test_logprob_rejects_deterministic_step_and_bad_shapes():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="eta"):
        ddim_step_logprob(x, x, x, 0.5, 0.6, eta=0.0)
    with pytest.raises(ValueError, match="deterministic"):
        ddim_step_logprob(x, x, x, 0.5, 1.0, eta=1.0)
    with pytest.raises(ValueError, match="shapes"):
        ddim_step_logprob(torch.zeros(1, 1, 2, 3), x, x, 0.5, 0.6, eta=1.0)


def test_spo_loss_is_ln2_at_initialisation():
    lp = torch.randn(5)
    losses, cw, cl = spo_step_loss(lp, lp.clone(), lp + 1.0, lp + 1.0)
    torch.testing.assert_close(losses, torch.full((5,), math.log(2.0)))
    assert torch.all(cw == 0) and torch.all(cl == 0)


def test_spo_loss_hand_derived_values():
    """Inside the clip: log r_w = 0.05, log r_l = -0.05, beta 10 -> -log sigmoid(1) = log(1 + e^-1).
    Outside: log r_w = 0.5 is clipped to log 1.1, log r_l = -0.5 to log 0.9."""
    z = torch.zeros(2)
    theta_w, theta_l = torch.tensor([0.05, 0.5]), torch.tensor([-0.05, -0.5])
    losses, cw, cl = spo_step_loss(theta_w, z, theta_l, z, beta=10.0, clip_eps=0.1)
    m_clip = 10 * (math.log(1.1) - math.log(0.9))
    expected = torch.tensor([math.log1p(math.exp(-1.0)), math.log1p(math.exp(-m_clip))])
    torch.testing.assert_close(losses, expected)
    torch.testing.assert_close(cw, torch.tensor([0.5, 10 * math.log(1.1)]))
    torch.testing.assert_close(cl, torch.tensor([-0.5, 10 * math.log(0.9)]))


def test_spo_loss_gradient_zero_outside_clip_and_matches_naive():
    tw = torch.tensor([0.5, 0.02, 0.0], requires_grad=True)   # row 0: winner ratio e^0.5 > 1.1 (clipped)
    tl = torch.tensor([0.03, -0.3, 0.0], requires_grad=True)  # row 1: loser ratio e^-0.3 < 0.9 (clipped)
    rw, rl = torch.zeros(3), torch.zeros(3)
    spo_step_loss(tw, rw, tl, rl)[0].sum().backward()
    assert tw.grad[0] == 0 and tl.grad[1] == 0
    assert tl.grad[0] != 0 and tw.grad[1] != 0
    # naive: per row, unclipped sides have d/dlogp of -log sigmoid(10 (a - b)) = -10 (1 - sigmoid(...))
    for i, (a, b, ga, gb) in enumerate([(0.5, 0.03, 0.0, None), (0.02, -0.3, None, 0.0), (0.0, 0.0, None, None)]):
        la = min(max(a, math.log(0.9)), math.log(1.1))
        lb = min(max(b, math.log(0.9)), math.log(1.1))
        g = -10.0 * (1.0 - 1.0 / (1.0 + math.exp(-10.0 * (la - lb))))
        assert float(tw.grad[i]) == pytest.approx(g if ga is None else ga, rel=1e-5, abs=1e-6)
        assert float(tl.grad[i]) == pytest.approx(-g if gb is None else gb, rel=1e-5, abs=1e-6)
