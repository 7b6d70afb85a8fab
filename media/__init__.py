"""Reading, conforming and writing video+audio clips (PyAV), and ComfyUI IMAGE/AUDIO conversion."""

from .comfy_types import (
    clip_from_comfy,
    comfy_audio_to_wave,
    conformed_to_comfy,
    image_to_video_tensor,
    video_tensor_to_image,
    wave_to_comfy_audio,
)
from .conforming import (
    ClipSpec,
    ConformedClip,
    ConformPlan,
    choose_size,
    conform,
    load_clip,
    plan_conform,
    resample_audio,
    target_audio_samples,
)
from .video_io import MAX_SIDE, Clip, MediaError, check_frame_size, read_clip
from .video_write import fresh_path, write_clip

__all__ = [
    "Clip",
    "ClipSpec",
    "ConformedClip",
    "ConformPlan",
    "MAX_SIDE",
    "MediaError",
    "check_frame_size",
    "choose_size",
    "clip_from_comfy",
    "comfy_audio_to_wave",
    "conform",
    "conformed_to_comfy",
    "fresh_path",
    "image_to_video_tensor",
    "load_clip",
    "plan_conform",
    "read_clip",
    "resample_audio",
    "target_audio_samples",
    "video_tensor_to_image",
    "wave_to_comfy_audio",
    "write_clip",
]
