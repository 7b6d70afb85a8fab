"""Does training on make-pairs data teach anything? Held-out loss of the tiny stand-in editor before and after
a short joint LoRA run on pairs composed from media synthesised on the spot (no synthetic-domain data).

    .venv/bin/python bench/pairs_adapter.py [--pairs 64] [--steps 60] [--threads 1]

The loss is the trainer's own flow-matching loss (video + audio) on the validation split, at fixed noise levels
(0.2, 0.4, 0.6, 0.8) and fixed noise per pair, with the model in eval mode. "Before" is the untrained editor
(its LoRA matrices start at zero, so it is exactly the base); "after" is the same model after the run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

SIGMAS = (0.2, 0.4, 0.6, 0.8)


def heldout_loss(trainer, data) -> float:
    import torch

    model = trainer.model
    was = model.training
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(len(data)):
            item = data.item(i, 0)
            for k, sigma in enumerate(SIGMAS):
                g = torch.Generator().manual_seed(1000 * i + k)
                batch = {"sigma": torch.tensor([sigma]), "context": item.context[None].float()}
                for m in trainer.config.towers:
                    x0 = getattr(item, f"target_{m}").float()
                    src = getattr(item, f"source_{m}").float()
                    batch[m] = (x0[None], src[None], torch.randn(x0.shape, generator=g)[None])
                loss, _ = trainer._loss(batch)
                total, n = total + float(loss), n + 1
    model.train(was)
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    from pair_media import make_media

    from instructav2av.cli.train import check_dataset, standin_bundle
    from instructav2av.data.cache import Codecs, LatentCache
    from instructav2av.data.engine import PairsConfig, make_pairs
    from instructav2av.data.pairs import open_pairs
    from instructav2av.models.configs import get_preset
    from instructav2av.training.config import TrainConfig
    from instructav2av.training.trainer import Trainer

    torch.set_num_threads(args.threads)
    preset = get_preset("tiny")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        media = make_media(root, clips=4)
        t0 = time.perf_counter()
        report = make_pairs(PairsConfig(output=str(root / "pairs"), clips=str(media["clips"]),
                                        cutouts=str(media["cutouts"]), sounds=str(media["sounds"]), count=args.pairs,
                                        validation_fraction=0.25, num_frames=preset.num_frames, fps=preset.fps,
                                        width=64, height=64, sample_rate=preset.sample_rate))
        print(f"{report.total} pairs ({dict(report.splits)}) in {time.perf_counter() - t0:.1f} s")
        config = TrainConfig(preset="tiny", data=str(root / "pairs/train.jsonl"), stage="joint", steps=args.steps,
                             batch_size=4, learning_rate=1e-3, output_dir=str(root / "run"), lora_rank=8,
                             checkpoint_every=0)
        pairs, rep = check_dataset(config, preset)
        rep.raise_if_problems()
        bundle = standin_bundle(preset)
        codecs = Codecs.from_bundle(bundle)
        cache = LatentCache(root / "cache", codecs)
        data = cache.build(pairs)
        heldout = LatentCache(root / "cache" / "validation", codecs).build(
            open_pairs(root / "pairs/validation.jsonl", pairs.windowing))
        trainer = Trainer(bundle.model, config, data, empty_context=cache.empty_prompt())
        before = heldout_loss(trainer, heldout)
        t0 = time.perf_counter()
        result = trainer.train()
        after = heldout_loss(trainer, heldout)
        print(f"tiny stand-in editor, joint LoRA rank 8, {result.steps} steps of batch 4 on {len(data)} train pairs "
              f"({time.perf_counter() - t0:.0f} s): held-out loss on {len(heldout)} validation pairs "
              f"{before:.4f} (untrained) -> {after:.4f} (trained), {100 * (after - before) / before:+.1f}%")


if __name__ == "__main__":
    main()
