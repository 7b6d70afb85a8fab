"""Scores: image/audio metrics, synthetic-domain accuracy, and comparing an edit with its source."""
