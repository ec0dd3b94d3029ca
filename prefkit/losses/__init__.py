"""Pure loss functions: tensors in, tensors out. No models, no data, no state."""
from prefkit.losses.dpo import DPO_KINDS, dpo_loss
from prefkit.losses.listwise import lambda_weights, listwise_logistic_loss
from prefkit.losses.ranked import ranked_dpo_loss

__all__ = ["DPO_KINDS", "dpo_loss", "lambda_weights", "listwise_logistic_loss", "ranked_dpo_loss"]
from prefkit.losses.spo import ddim_step_logprob, spo_step_loss  # noqa: E402  (SPO, issue 6)

__all__ += ["ddim_step_logprob", "spo_step_loss"]
from prefkit.losses.diffusion import diffusion_dpo_loss, ranked_diffusion_dpo_loss  # noqa: E402  (issue 5, diffusion)

__all__ += ["diffusion_dpo_loss", "ranked_diffusion_dpo_loss"]
