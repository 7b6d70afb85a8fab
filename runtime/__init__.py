"""Run-time resources: where memory planning, weight offload (block swap) and stage timing live.

memory.py (the planner), offload.py (block swap and streaming from the file), meter.py (stage timing,
peak memory), threads.py (CPU threads): below the samplers and the edit pipeline, above the model code.
"""
