"""Diffusion backend on diffusers (issue 5): model building and local SD-style loading (backend.py), per-item
noise-prediction errors (noise_mse.py), LoRA with an adapters-disabled reference (lora.py), a DDIM sampler
with classifier-free guidance (ddim.py), the trainable preference module (module.py) and the recipe
config sections (run_config.py). SPO's pieces live beside them (spo_*.py, step_scorer.py).
"""
