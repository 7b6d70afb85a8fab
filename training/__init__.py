"""The two-stage trainer and its configuration (data in ``data/``, adapter files in ``weights/``)."""
