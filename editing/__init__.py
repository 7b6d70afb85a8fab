"""The edit pipeline: a bundle of model + codecs + text encoder (:mod:`.bundle`), the stages of an edit
(:mod:`.stages`) and the whole edit (:mod:`.edit`). This package re-exports their public names (the API
that ``instructav2av.pipeline`` offered before 0.2)."""

from .bundle import (
    AudioCodec,
    EditDefaults,
    EditorBundle,
    InstructionEncoder,
    VideoCodec,
    apply_adapters,
    bundle_loaders,
    load_bundle,
    register_bundle_loader,
    video_latent_channels,
)
from .edit import STAGES, EditCancelled, EditResult, edit
from .stages import (
    InstructionEmbeddings,
    check_instruction,
    decode_latents,
    encode_instructions,
    encode_source,
    prepare_source,
)

__all__ = [
    "VideoCodec",
    "AudioCodec",
    "InstructionEncoder",
    "EditDefaults",
    "EditorBundle",
    "InstructionEmbeddings",
    "EditResult",
    "EditCancelled",
    "STAGES",
    "register_bundle_loader",
    "bundle_loaders",
    "load_bundle",
    "apply_adapters",
    "prepare_source",
    "encode_source",
    "encode_instructions",
    "decode_latents",
    "check_instruction",
    "video_latent_channels",
    "edit",
]
