"""Codec models: Wan2.2 video VAE, MMAudio audio VAE + BigVGAN vocoder, log-mel, umT5 text encoder."""
