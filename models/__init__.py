"""Pure-torch model code: the SIGA-DiT twin towers, attention, RoPE, configs, checkpoints, codecs."""
