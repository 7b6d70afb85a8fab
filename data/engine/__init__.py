"""The pair engine: training pairs with exact ground truth, composed from the user's own clips, cut-outs and
sounds (add <-> remove a sound or an object, replace a sound, recolour, and the joint versions)."""

from .assets import Assets, Cutout, Skipped, Sound, cutout_from_mask, fit_mask, load_assets
from .build import PairsConfig, PairsReport, check_output, contact_sheet, make_pairs
from .kinds import KINDS

__all__ = ["KINDS", "Assets", "Cutout", "PairsConfig", "PairsReport", "Skipped", "Sound", "check_output",
           "contact_sheet", "cutout_from_mask", "fit_mask", "load_assets", "make_pairs"]
