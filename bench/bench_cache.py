"""Images/s of decode + resize from PNG versus reading the uint8 cache, in one run.

    .venv/bin/python bench/bench_cache.py                  # defaults: ../shared/data/nih, 224 px
    .venv/bin/python bench/bench_cache.py --size 128 --limit 300 --json bench.json

For each source folder (the NIH 256 px PNGs and the 1024 px originals) it times, on one
process: (1) ``read_radiograph`` + ``PreprocessContract.to_uint8`` for every image, exactly
what a training step without a cache does; (2) building the cache; (3) fetching the same
images from the cache by path (``lookup`` + copying each row out of the memory map), which is
what ``UInt8Dataset`` does with a cache. It prints the rates and the ratio cache/decode.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from xraytriage.data.cache import ImageCache, decode_to_uint8  # noqa: E402
from xraytriage.preprocess import PreprocessContract  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "nih"


def time_decode(paths: list[str], contract: PreprocessContract) -> float:
    start = time.perf_counter()
    for path in paths:
        decode_to_uint8(path, contract)
    return time.perf_counter() - start


def time_cache_reads(cache: ImageCache, paths: list[str], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        rows = cache.lookup(paths)
        array = cache.array
        for row in rows:
            np.array(array[row])  # copy out, as a DataLoader item would
    return (time.perf_counter() - start) / repeats


def bench_folder(
    folder: Path, contract: PreprocessContract, limit: int | None, work: Path, repeats: int
) -> dict:
    paths = sorted(str(p) for p in folder.glob("*.png"))[:limit]
    if not paths:
        raise SystemExit(f"{folder}: no PNG files")
    decode_s = time_decode(paths, contract)
    cache = ImageCache(work / folder.name, contract)
    start = time.perf_counter()
    report = cache.build(paths, workers=1, progress=False)
    build_s = time.perf_counter() - start
    if report.failed:
        raise SystemExit(f"{folder}: {report.failed} file(s) failed to decode: {report.errors}")
    read_s = time_cache_reads(cache, paths, repeats)
    sample = paths[len(paths) // 2]
    assert np.array_equal(cache.get(sample), decode_to_uint8(sample, contract)), "cache differs from decoding"
    return {
        "folder": str(folder),
        "images": len(paths),
        "source_size": "x".join(str(v) for v in _size(paths[0])),
        "decode_resize_img_per_s": len(paths) / decode_s,
        "cache_build_img_per_s": len(paths) / build_s,
        "cache_read_img_per_s": len(paths) / read_s,
        "ratio_cache_vs_decode": decode_s / read_s,
    }


def _size(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        return img.size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="NIH folder with images/ and fullres/"
    )
    parser.add_argument("--folders", nargs="+", default=["images", "fullres"], help="sub-folders to measure")
    parser.add_argument("--size", type=int, default=224, help="contract size (default 224)")
    parser.add_argument("--limit", type=int, default=None, help="at most N images per folder")
    parser.add_argument("--repeats", type=int, default=5, help="cache read passes to average (default 5)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    contract = PreprocessContract(size=args.size)
    results = []
    with tempfile.TemporaryDirectory(prefix="xraytriage-bench-") as tmp:
        for name in args.folders:
            results.append(bench_folder(args.data / name, contract, args.limit, Path(tmp), args.repeats))

    print(
        f"contract: size={contract.size} resize={contract.resize} intensity={contract.intensity}; one process"
    )
    header = f"{'source':<28}{'images':>7}{'decode+resize/s':>17}{'cache build/s':>15}{'cache read/s':>14}{'ratio':>9}"
    print(header)
    print("-" * len(header))
    for r in results:
        label = f"{Path(r['folder']).name} ({r['source_size']})"
        print(
            f"{label:<28}{r['images']:>7}{r['decode_resize_img_per_s']:>17.1f}{r['cache_build_img_per_s']:>15.1f}"
            f"{r['cache_read_img_per_s']:>14.0f}{r['ratio_cache_vs_decode']:>8.0f}x"
        )
    worst = min(r["ratio_cache_vs_decode"] for r in results)
    print(
        f"cache is {worst:.0f}x faster than decoding at worst (target >= 5x): {'OK' if worst >= 5 else 'BELOW TARGET'}"
    )
    if args.json is not None:
        payload = {"python": platform.python_version(), "contract": contract.to_dict(), "results": results}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0 if worst >= 5 else 1


if __name__ == "__main__":
    sys.exit(main())
