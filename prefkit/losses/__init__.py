"""Pure loss functions: tensors in, tensors out. No models, no data, no state."""
from prefkit.losses.dpo import DPO_KINDS, dpo_loss
from prefkit.losses.listwise import lambda_weights, listwise_logistic_loss

__all__ = ["DPO_KINDS", "dpo_loss", "lambda_weights", "listwise_logistic_loss"]
