"""Datasets, latent cache, adapters, the two-stage trainer, synthetic data and evaluation metrics."""
