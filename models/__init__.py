"""Pure-torch model code: the SIGA-DiT twin towers, attention, RoPE, configs, ops; codecs in ``codecs/``."""
