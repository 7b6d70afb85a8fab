"""InstructAV2AV for ComfyUI: instruction-guided joint audio-video editing on Ovi.

ComfyUI imports this file as a custom-node pack and reads ``NODE_CLASS_MAPPINGS``.
The mappings are resolved lazily (PEP 562) so that the CLI, the trainer and the tests
can import ``instructav2av.models`` without pulling in the node layer.
"""

__version__ = "0.1.0"

WEB_DIRECTORY = None

if __package__:  # pytest may also import this file alone, as a top-level module without a package
    from . import _compat  # old module paths keep importing, with a DeprecationWarning

    _compat.install(__name__)

_NODE_ATTRS = ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS")


def __getattr__(name: str):
    if name in _NODE_ATTRS:
        from . import nodes

        return getattr(nodes, name)
    raise AttributeError(name)


__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "__version__"]
