"""Weight files: formats, layout detection and key maps, editor/adapter load and save (no training code)."""
