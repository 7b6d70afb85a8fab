"""ComfyUI node classes. Thin wrappers: all computation lives in models/, samplers/, training/."""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
