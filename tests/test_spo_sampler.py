"""SPO multi-sample DDIM sampler: candidates, pair selection, step-wise resampler, UNet count."""
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler

from prefkit.diffusion.ddim import guided_eps_and_forwards as guided_eps
from prefkit.diffusion.spo_sampler import SPOSamplerConfig, ddim_schedule, spo_sample
from prefkit.losses.spo import ddim_step_mean


class FakeUNet(torch.nn.Module):
    """eps = tanh(a x + mean(e)) with a per-sample conditioning shift; counts calls and rows."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.3))
        self.rows = 0

    def forward(self, x, t, encoder_hidden_states):
        assert t.shape == (x.shape[0],)
        self.rows += x.shape[0]
        shift = encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return SimpleNamespace(sample=torch.tanh(self.a * x + shift + 1e-4 * t.view(-1, 1, 1, 1)))


def _setup(B=3, T=6):
    sch = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                        set_alpha_to_one=False, steps_offset=1)
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(B, 4, 8, generator=g)
    uncond = torch.zeros(B, 4, 8)
    return FakeUNet(), sch, cond, uncond


def _score(x0, t, rows):  # prefer bright images; a pure function of the candidate's x0_hat
    return 5.0 * x0.detach().flatten(1).mean(1)


@pytest.mark.parametrize("divert", [0, 2])
def test_unet_count_pairs_and_divert_start(divert):
    unet, sch, cond, uncond = _setup()
    B, T, K = 3, 6, 3
    cfg = SPOSamplerConfig(num_inference_steps=T, eta=1.0, guidance_scale=4.0, num_candidates=K,
                           threshold=0.0, divert_start_step=divert)
    out = spo_sample(unet, sch, cond, uncond, _score, cfg, shape=(2, 4, 4), generator=torch.Generator().manual_seed(1))
    # 2B for x_T and for each plain step, 2KB for every multi-sample step but the last (its x_0 needs no UNet)
    assert out.unet_forwards == unet.rows == 2 * B * (1 + divert) + 2 * K * B * (T - 1 - divert)
    assert out.n_compared == B * (T - divert) and out.scores.shape == (K * B * (T - divert),)
    assert out.images.shape == (B, 2, 4, 4)
    p = out.pairs
    assert len(p) == B * (T - divert)  # threshold 0: every comparison with distinct scores is kept
    assert int(p.step_index.min()) == divert
    assert torch.all(p.score_w >= p.score_l)
    assert set(p.rows.tolist()) == set(range(B))


def test_threshold_filters_on_softmax_gap():
    unet, sch, cond, uncond = _setup()
    cfg = SPOSamplerConfig(num_inference_steps=6, num_candidates=4, threshold=0.3)
    out = spo_sample(unet, sch, cond, uncond, _score, cfg, shape=(2, 4, 4), generator=torch.Generator().manual_seed(2))
    p = out.pairs
    gap = torch.stack([p.score_w, p.score_l]).softmax(0)
    assert torch.all(gap[0] - gap[1] > 0.3)
    assert len(p) < out.n_compared  # some comparisons fall under the threshold with these scores


def test_candidates_are_ddim_draws_and_winner_is_argmax():
    """x_w - mu_theta(x_t) is sigma_t times standard normal noise, and x_w has the highest score."""
    unet, sch, cond, uncond = _setup(B=8)
    cfg = SPOSamplerConfig(num_inference_steps=6, eta=1.0, guidance_scale=3.0, num_candidates=2, threshold=0.0)
    out = spo_sample(unet, sch, cond, uncond, _score, cfg, shape=(2, 6, 6), generator=torch.Generator().manual_seed(3))
    p = out.pairs
    grid = ddim_schedule(sch, 6)
    residuals = []
    for j in range(len(p)):
        t, b = int(p.timesteps[j]), int(p.rows[j])
        eps, _ = guided_eps(unet, p.x_t[j:j + 1], t, cond[b:b + 1], uncond[b:b + 1], 3.0, scheduler=sch)
        _, a_t, a_p = grid[int(p.step_index[j])]
        assert grid[int(p.step_index[j])][0] == t
        mu, sigma, _ = ddim_step_mean(p.x_t[j:j + 1], eps, a_t, a_p, 1.0)
        assert float(p.alpha_bar_t[j]) == pytest.approx(a_t) and float(p.alpha_bar_prev[j]) == pytest.approx(a_p)
        residuals += [((p.x_w[j:j + 1] - mu) / sigma).flatten(), ((p.x_l[j:j + 1] - mu) / sigma).flatten()]
        if int(p.step_index[j]) < 5:  # the winner's score is that of its own x0_hat at the next timestep
            t_next, a_n, _ = grid[int(p.step_index[j]) + 1]
            scores = []
            for x in (p.x_w[j:j + 1], p.x_l[j:j + 1]):
                e, _ = guided_eps(unet, x, t_next, cond[b:b + 1], uncond[b:b + 1], 3.0, scheduler=sch)
                scores.append(float(_score((x - (1 - a_n) ** 0.5 * e) / a_n**0.5, None, None)))
            assert scores[0] == pytest.approx(float(p.score_w[j]), rel=1e-4)
            assert scores[1] == pytest.approx(float(p.score_l[j]), rel=1e-4)
    r = torch.cat(residuals).detach()
    assert abs(float(r.mean())) < 0.1 and abs(float(r.std()) - 1.0) < 0.1


def test_stepwise_resampler_continues_from_a_random_candidate():
    """With k = 2 the next parent is the winner or the loser, and not always the winner."""
    unet, sch, cond, uncond = _setup(B=24)
    cfg = SPOSamplerConfig(num_inference_steps=5, num_candidates=2, threshold=0.0)
    out = spo_sample(unet, sch, cond, uncond, _score, cfg, shape=(1, 3, 3), generator=torch.Generator().manual_seed(4))
    p = out.pairs
    took_winner = []
    for b in range(24):
        idx = (p.rows == b).nonzero().squeeze(1)
        idx = idx[p.step_index[idx].argsort()]
        for a, c in zip(idx[:-1].tolist(), idx[1:].tolist()):
            assert int(p.step_index[c]) == int(p.step_index[a]) + 1
            is_w, is_l = torch.equal(p.x_t[c], p.x_w[a]), torch.equal(p.x_t[c], p.x_l[a])
            assert is_w or is_l
            took_winner.append(is_w)
    frac = sum(took_winner) / len(took_winner)
    assert 0.3 < frac < 0.7, frac


def test_config_validation():
    with pytest.raises(ValueError, match="unknown keys"):
        SPOSamplerConfig.from_dict({"num_candidates": 4, "k": 2})
    with pytest.raises(ValueError, match="eta"):
        SPOSamplerConfig(eta=0.0)
    with pytest.raises(ValueError, match="num_candidates"):
        SPOSamplerConfig(num_candidates=1)
    with pytest.raises(ValueError, match="divert_start_step"):
        SPOSamplerConfig(num_inference_steps=5, divert_start_step=5)


def test_prefkit_ddpm_schedule_last_step_is_plain():
    """With a DDPMScheduler (prefkit backends) alpha_bar_prev = 1 after the last step: sigma = 0, so the last
    step is a plain deterministic step and is never compared; x0_hat is clipped like the scheduler's config."""
    from diffusers import DDPMScheduler

    unet, _, cond, uncond = _setup()
    sch = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    grid = ddim_schedule(sch, 5)
    assert [t for t, _, _ in grid] == [800, 600, 400, 200, 0] and grid[-1][2] == 1.0
    seen = []
    cfg = SPOSamplerConfig(num_inference_steps=5, num_candidates=2, threshold=0.0)
    out = spo_sample(unet, sch, cond, uncond, lambda x0, t, r: (seen.append(x0), _score(x0, t, r))[1], cfg,
                     shape=(2, 4, 4), generator=torch.Generator().manual_seed(5))
    B, T, K = 3, 5, 2
    assert out.n_compared == B * (T - 1) and int(out.pairs.step_index.max()) == T - 2
    assert out.unet_forwards == 2 * B + 2 * K * B * (T - 1)
    assert max(float(x.abs().max()) for x in seen) <= 1.0


def test_guided_eps_per_row_timesteps_and_forward_count_match_the_cfg_formula():
    """The sampler's guided eps (prefkit.diffusion.ddim) against the formula written out: one UNet batch of
    [uncond; cond], eps_u + w (eps_c - eps_u), per-row timesteps, CFG counting 2 forwards per row."""
    from prefkit.diffusion.ddim import guided_eps as plain_guided_eps

    unet, sch, cond, uncond = _setup(B=3)
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([900, 500, 20])
    out = unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([uncond, cond])).sample
    e_u, e_c = out.chunk(2)
    expected = e_u + 3.0 * (e_c - e_u)
    unet.rows = 0
    eps, n = guided_eps(unet, x, t, cond, uncond, 3.0, scheduler=sch)
    assert torch.equal(eps, expected) and n == 6 and unet.rows == 6
    for i in range(3):  # per-row timesteps == one timestep per row
        row, _ = guided_eps(unet, x[i:i + 1], int(t[i]), cond[i:i + 1], uncond[i:i + 1], 3.0, scheduler=sch)
        torch.testing.assert_close(row, eps[i:i + 1])
    assert torch.equal(plain_guided_eps(unet, x, t, cond, uncond, 3.0, scheduler=sch), eps)
    unet.rows = 0
    eps1, n1 = guided_eps(unet, x, 500, cond, None, 3.0, scheduler=sch)  # no uncond: plain conditional eps, one forward per row
    assert torch.equal(eps1, unet(x, torch.full((3,), 500), encoder_hidden_states=cond).sample) and n1 == 3
    assert guided_eps(unet, x, 500, cond, uncond, 1.0, scheduler=sch)[1] == 3


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_step_equals_diffusers_for_epsilon_and_v_prediction(prediction_type):
    """SD 2.x-v UNets predict v: the DDIM/SPO steps convert it to eps first (to_epsilon), as diffusers'
    DDIMScheduler does; the step then equals DDIMScheduler.step(eta=1) with the same noise."""
    from diffusers import DDIMScheduler, DDPMScheduler

    from prefkit.diffusion.ddim import ddim_step, to_epsilon

    dd = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                       prediction_type=prediction_type, clip_sample=False)
    ddim = DDIMScheduler.from_config(dd.config, set_alpha_to_one=True, steps_offset=0)
    ddim.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, out, z = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(3))
    t, a_t, a_p = ddim_schedule(dd, 10)[2]
    step = ddim_step(x, to_epsilon(out, x, t, dd), a_t, a_p, eta=1.0, noise=z)
    want = ddim.step(out, t, x, eta=1.0, variance_noise=z).prev_sample
    torch.testing.assert_close(step.prev, want, atol=1e-5, rtol=0)
    if prediction_type == "v_prediction":  # without the conversion the step lands far away
        assert (ddim_step(x, out, a_t, a_p, eta=1.0, noise=z).prev - want).abs().max() > 0.5
