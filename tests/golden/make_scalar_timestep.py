"""Records the DiT outputs for a scalar / per-sample timestep (tests/test_token_timesteps.py).

``dit_scalar_timestep.safetensors`` was written by this script from the code *before* per-token
timesteps existed (main at efab76c), single-threaded, so the test proves the scalar path unchanged:
    PYTHONPATH=<pkgpath> python tests/golden/make_scalar_timestep.py tests/golden/dit_scalar_timestep.safetensors
"""
import sys

import torch
from safetensors.torch import save_file

from instructav2av.models.configs import get_preset
from instructav2av.models.dit import AVEditorDiT

torch.set_num_threads(1)
out = {}
for editor in (False, True):
    torch.manual_seed(5)
    m = AVEditorDiT(get_preset("tiny"), editor=editor).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator().manual_seed(3)
    x = dict(video=torch.randn(2, 48, 3, 4, 6, generator=g), audio=torch.randn(2, 12, 20, generator=g),
             video_context=torch.randn(2, 5, 32, generator=g), audio_context=torch.randn(2, 5, 32, generator=g))
    src = dict(video_source=torch.randn(2, 48, 3, 4, 6, generator=g), audio_source=torch.randn(2, 12, 20, generator=g)) if editor else {}
    tag = "editor" if editor else "base"
    with torch.no_grad():
        for tname, t in (("scalar", torch.tensor(700.0)), ("batch", torch.tensor([937.0, 312.0]))):
            v, a = m(x["video"], x["audio"], t, x["video_context"], x["audio_context"], **src)
            out[f"{tag}.{tname}.video"], out[f"{tag}.{tname}.audio"] = v, a
save_file(out, sys.argv[1], metadata={"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()})
print({k: v.shape for k, v in out.items()})
