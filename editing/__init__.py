"""The edit pipeline: a bundle of model + codecs + text encoder, its stages, and ``edit``."""
