"""The embedded demo: its tiny codecs and word-level text encoder, its recipe, bundle and held-out scoring."""
