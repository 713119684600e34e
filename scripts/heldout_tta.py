"""A fold model's held-out predictions again, optionally averaged with a horizontally flipped
pass (test-time augmentation), to measure what flip TTA does to the out-of-fold AUCs.

    python scripts/heldout_tta.py RUN/fold-1/last.pt RUN/fold-1/val_predictions.csv \
        --cache .cache/nih --flip -o flip.csv

The images are the rows of the fold's ``val_predictions.csv`` (patients the fold model never
saw), read from the training cache of the checkpoint's preprocessing contract. The output has
the same ``path`` and ``prob_<label>`` columns, so ``scripts/ablation_table.py`` scores it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from xraytriage.data.cache import ImageCache  # noqa: E402
from xraytriage.models import load_checkpoint  # noqa: E402
from xraytriage.models.inference import TorchPredictor  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("predictions", type=Path, help="the fold's val_predictions.csv (held-out images)")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "nih")
    parser.add_argument("--flip", action="store_true", help="average with a horizontally flipped pass")
    parser.add_argument("--output", "-o", type=Path, required=True)
    args = parser.parse_args(argv)
    checkpoint = load_checkpoint(args.checkpoint)
    cache = ImageCache(args.cache, checkpoint.preprocess)
    frame = pd.read_csv(args.predictions)
    paths = frame["path"].astype(str).tolist()
    missing = [p for p in paths if p not in cache]
    if missing:
        raise SystemExit(f"{args.cache}: {len(missing)} held-out images not cached (e.g. {missing[0]})")
    predictor = TorchPredictor(checkpoint)
    probs = []
    for start in range(0, len(paths), 64):
        batch = np.stack([cache.get(p) for p in paths[start : start + 64]])
        out = predictor.predict_proba(batch)
        if args.flip:
            out = (out + predictor.predict_proba(np.ascontiguousarray(batch[..., ::-1]))) / 2
        probs.append(out)
    result = pd.DataFrame(np.concatenate(probs), columns=[f"prob_{n}" for n in checkpoint.label_names])
    result.insert(0, "path", paths)
    result.to_csv(args.output, index=False)
    print(f"{args.output}: {len(result)} held-out images{' (with flip TTA)' if args.flip else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
