"""The body-part router's training table from the real images in ../shared/data.

One CSV row per image: ``path, patient_id, study_id, collection`` and one 0/1 column per body
part (``CHEST, HAND, LEG, HIP, SHOULDER``): every NIH and pediatric image is a chest; a
FracAtlas image has the parts its flags name (a few show two). Patient ids are prefixed by
their source (``nih-``, ``ped-``, ``fa-`` + the FracAtlas group), so a patient-grouped split
holds whole NIH patients, pediatric patients and FracAtlas groups out together.

    python scripts/make_body_part_table.py ../shared/data runs/router/body_parts.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from xraytriage.data.registry import load_dataset

PARTS = ("CHEST", "HAND", "LEG", "HIP", "SHOULDER")


def body_part_table(data: Path) -> pd.DataFrame:
    frames = []
    nih = load_dataset("nih", root=str(data / "nih"), views="all")
    frames.append(_frame(nih.table, "nih-", lambda t: ["CHEST"] * len(t), "nih-" + nih.table["collection"]))
    ped = load_dataset("folder", root=str(data / "pediatric"), patient_pattern=r"(person\d+|IM-\d+)")
    frames.append(_frame(ped.table, "ped-", lambda t: ["CHEST"] * len(t), "pediatric"))
    fa = load_dataset("fracatlas", root=str(data / "msk" / "fracatlas"))
    frames.append(
        _frame(fa.table, "fa-", lambda t: t["body_part"].str.upper().tolist(), fa.table["collection"])
    )
    return pd.concat(frames, ignore_index=True)


def _frame(table: pd.DataFrame, prefix: str, parts_of, collection) -> pd.DataFrame:
    parts = parts_of(table)
    out = pd.DataFrame(
        {
            "path": table["path"].to_numpy(),
            "patient_id": (prefix + table["patient_id"].astype(str)).to_numpy(),
            "study_id": table["study_id"].astype(str).to_numpy(),
            "collection": pd.Series(collection, index=table.index).to_numpy()
            if not isinstance(collection, str)
            else collection,
        }
    )
    for part in PARTS:
        out[part] = [int(part in p.split("+")) for p in parts]
    return out


if __name__ == "__main__":
    data_dir, output = Path(sys.argv[1]), Path(sys.argv[2])
    output.parent.mkdir(parents=True, exist_ok=True)
    table = body_part_table(data_dir)
    table.to_csv(output, index=False)
    print(f"{output}: {len(table)} images; " + ", ".join(f"{p} {int(table[p].sum())}" for p in PARTS))
