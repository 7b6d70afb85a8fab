"""Training data: pair datasets and their validation, the latent cache, the synthetic editing domain."""
