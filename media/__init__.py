"""Reading, conforming and writing video+audio clips (PyAV), and ComfyUI IMAGE/AUDIO conversion."""
