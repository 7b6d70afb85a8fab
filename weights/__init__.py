"""Weight files: formats, layout detection and key maps, editor/adapter load and save (no training code);
the registry of published model files, fetching them (``download``), and checking a machine (``doctor``)."""
