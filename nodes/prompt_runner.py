"""Runs an API-format ComfyUI prompt in dependency order, in plain Python (no ComfyUI needed).

The workflow tests and ``workflows/make_thumbnails.py`` both execute the demo workflow this way;
one runner keeps their idea of "graph order" and input resolution the same."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def run_prompt(
    prompt: Mapping[str, dict],
    classes: Mapping[str, type],
    other: Callable[[str, str, dict[str, Any]], tuple],
) -> dict[str, tuple]:
    """Execute every node of `prompt` once, each after the nodes it takes inputs from.

    A node whose ``class_type`` is in `classes` is instantiated and its ``FUNCTION`` called with its
    resolved inputs (links ``[node_id, slot]`` become that node's output); any other node (a core
    ComfyUI node) gets ``other(node_id, class_type, inputs)`` as its outputs. Returns every node's
    outputs by node id."""
    results: dict[str, tuple] = {}

    def value(v: Any) -> Any:
        return results[v[0]][v[1]] if isinstance(v, list) else v

    def run(nid: str) -> None:
        if nid in results:
            return
        node = prompt[nid]
        for v in node["inputs"].values():
            if isinstance(v, list):
                run(v[0])
        kwargs = {k: value(v) for k, v in node["inputs"].items()}
        cls = classes.get(node["class_type"])
        if cls is None:
            results[nid] = other(nid, node["class_type"], kwargs)
            return
        obj = cls()
        results[nid] = getattr(obj, obj.FUNCTION)(**kwargs)

    for nid in prompt:
        run(nid)
    return results
