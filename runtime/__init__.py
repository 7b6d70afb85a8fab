"""Run-time resources: where memory planning, weight offload (block swap) and stage timing live.

Empty for now on purpose: it is the home the memory layer (planner, offload, meters) grows into,
below the samplers and the edit pipeline and above the model code.
"""
