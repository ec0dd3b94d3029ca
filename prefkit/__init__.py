"""prefkit: step-wise, ranked, curriculum, diffusion and safety preference optimization."""
__version__ = "0.1.0"
