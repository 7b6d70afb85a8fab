"""Flow-matching schedules, solvers, editing guidance and the sampling loop (no ComfyUI imports)."""
