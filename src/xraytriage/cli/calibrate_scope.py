"""``calibrate --ood-reference`` and ``--age-range``: what the model was trained on, stored in
the checkpoint so that triage and the service can warn about images outside it (the
out-of-distribution reference on the training images' features; the training ages)."""

from __future__ import annotations

import argparse


def set_age_range(checkpoint, text: str) -> None:
    """``--age-range 9-89`` into the checkpoint's scope."""
    from xraytriage.errors import ConfigError

    low, sep, high = text.partition("-")
    try:
        ages = [float(low), float(high)]
    except ValueError:
        raise ConfigError(f"--age-range must look like 9-89, got {text!r}") from None
    if not sep or not 0 <= ages[0] < ages[1] <= 130:
        raise ConfigError(f"--age-range must look like 9-89 (0 <= min < max <= 130), got {text!r}")
    checkpoint.scope = {**(checkpoint.scope or {}), "age_years": ages}


def run_ood_reference(checkpoint, args: argparse.Namespace) -> dict:
    """Score the training images and store their feature statistics as the OOD reference."""
    from xraytriage.cli.site_scoring import score_images
    from xraytriage.models.ood import fit_reference

    scored = score_images(checkpoint, args.ood_reference, workers=args.workers)
    for line in scored.errors[:10]:
        print(f"  skipped: {line}")
    seen = len(checkpoint.seen_in_training(scored.paths))
    source = ", ".join(str(p) for p in args.ood_reference)
    reference = fit_reference(scored.features, args.ood_percentile, source)
    checkpoint.ood = reference.to_dict()
    print(
        f"  OOD reference: {reference.images} images ({seen} of them the model's training images, "
        f"{len(scored.errors)} unreadable), {reference.dim} features; warning line = "
        f"{reference.percentile:g}th percentile of their distances ({reference.threshold:.2f})"
    )
    if checkpoint.training_images and seen < reference.images:
        print(f"  note: {reference.images - seen} reference images are not among the model's training images")
    return {"images": reference.images, "training_images": seen, "unreadable": len(scored.errors),
            "percentile": reference.percentile, "threshold_distance": reference.threshold, "source": source}  # fmt: skip
