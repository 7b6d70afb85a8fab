"""Flow-matching schedules, solvers, editing guidance and the sampling loop (no ComfyUI imports)."""

from .conditioning import EditConditioning
from .flowedit import FlowEditSettings, flowedit
from .guidance import OVI_SLG_LAYER, EditDenoiser, EditGuidance, GuidancePlan, ModelFn, plan_guidance
from .masks import PreserveMask, build_preserve_mask, parse_time_ranges
from .sampling import SamplingCancelled, StepCallback, initial_noise, sample
from .schedules import DEFAULT_SHIFT, DEFAULT_STEPS, Schedule, edit_schedule, flow_schedule
from .solvers import DEFAULT_SOLVER, SOLVERS, FlowSolver, make_solver

__all__ = [
    "sample",
    "EditConditioning",
    "flowedit",
    "FlowEditSettings",
    "PreserveMask",
    "build_preserve_mask",
    "parse_time_ranges",
    "initial_noise",
    "SamplingCancelled",
    "StepCallback",
    "EditGuidance",
    "EditDenoiser",
    "GuidancePlan",
    "ModelFn",
    "plan_guidance",
    "OVI_SLG_LAYER",
    "Schedule",
    "flow_schedule",
    "edit_schedule",
    "DEFAULT_STEPS",
    "DEFAULT_SHIFT",
    "FlowSolver",
    "SOLVERS",
    "DEFAULT_SOLVER",
    "make_solver",
]
