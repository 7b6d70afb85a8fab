"""ComfyUI node classes. Thin wrappers: all computation lives in models/, weights/, samplers/, editing/, media/, data/, evaluation/ and training/.

Each module of this package defines ``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS`` for its
nodes; this file merges them in the order of :data:`NODE_MODULES` (which is the order the nodes
appear in ComfyUI's menu). Node ids are never renamed: saved workflows refer to them.

Every node's FUNCTION is wrapped here with :func:`.comfy_env.shows_warnings`, so that what the pack
logs as a warning while a node runs is shown on that node in ComfyUI (not only in the server console),
for every node, including ones added later.
"""

from __future__ import annotations

import importlib

from . import comfy_env

NODE_MODULES = ("loaders", "demo", "encode", "sample", "flowedit", "decode", "evaluate", "train", "pairs")

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

for _name in NODE_MODULES:
    _module = importlib.import_module(f".{_name}", __name__)
    for _node_id, _cls in _module.NODE_CLASS_MAPPINGS.items():
        if _node_id in NODE_CLASS_MAPPINGS:
            raise RuntimeError(f"node id {_node_id} is defined twice (nodes/{_name}.py)")
        if _cls.FUNCTION in _cls.__dict__:
            setattr(_cls, _cls.FUNCTION, comfy_env.shows_warnings(_cls.__dict__[_cls.FUNCTION]))
        NODE_CLASS_MAPPINGS[_node_id] = _cls
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

# Inside ComfyUI: register models/mmaudio and create the pack's model folders now, at start-up.
comfy_env.register_model_folders()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "NODE_MODULES"]
