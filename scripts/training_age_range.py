"""The age range (years) a checkpoint's training images cover, for ``calibrate --age-range``.

Joins the checkpoint's training image names with the NIH label file's ``Patient Age`` and
prints the central (100 - 2 * TAIL)% range, rounded outwards, e.g. ``9-89``: the ages the model
saw enough of. The tails are left out on purpose: NIH holds a handful of children among
thousands of adults, too few for an adult model to read children well.

    python scripts/training_age_range.py src/xraytriage/assets/default_model/model.pt \\
        ../shared/data/nih/meta/Data_Entry_2017_v2020.csv.gz [--tail 0.5]
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import pandas as pd

from xraytriage.models import load_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint")
    parser.add_argument("data_entry", help="NIH Data_Entry_2017 CSV (Image Index, Patient Age)")
    parser.add_argument("--tail", type=float, default=0.5, help="percent left out at each end (default 0.5)")
    args = parser.parse_args(argv)
    names = set(load_checkpoint(args.checkpoint).training_images)
    table = pd.read_csv(args.data_entry, usecols=["Image Index", "Patient Age"])
    ages = table.loc[table["Image Index"].isin(names), "Patient Age"].to_numpy(dtype=float)
    if len(ages) == 0:
        print(f"{args.data_entry}: none of the checkpoint's training images is listed", file=sys.stderr)
        return 1
    low, high = np.percentile(ages, [args.tail, 100 - args.tail])
    print(f"{math.floor(low)}-{math.ceil(high)}")
    print(
        f"{len(ages)} training images with an age; min {ages.min():.0f}, max {ages.max():.0f}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
