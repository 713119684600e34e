"""ImageCache: identical pixels to direct decoding, keyed by the contract, incremental, robust."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from xraytriage.data import CSVDataset, ImageCache, UInt8Dataset
from xraytriage.data.cache import decode_to_uint8
from xraytriage.preprocess import PreprocessContract

CONTRACT = PreprocessContract(size=32)


@pytest.fixture(scope="module")
def nih_paths(shared_data):
    return sorted(str(p) for p in (shared_data / "nih" / "images").glob("*.png"))[:24]


def test_rows_equal_direct_decoding(tmp_path, nih_paths):
    cache = ImageCache(tmp_path, CONTRACT)
    report = cache.build(nih_paths, workers=1, progress=False)
    assert (report.added, report.failed, report.reused) == (24, 0, 0)
    rows = cache.lookup(nih_paths)
    assert sorted(rows.tolist()) == list(range(24))
    assert cache.array.shape == (24, 32, 32) and cache.array.dtype == np.uint8
    for path in nih_paths[:6]:
        np.testing.assert_array_equal(cache.get(path), decode_to_uint8(path, CONTRACT))
    # a fresh object reads the same store from disk
    reopened = ImageCache(tmp_path, CONTRACT)
    np.testing.assert_array_equal(reopened.array[reopened.lookup(nih_paths)], cache.array[rows])


def test_parallel_build_matches_serial(tmp_path, nih_paths):
    serial = ImageCache(tmp_path / "a", CONTRACT)
    serial.build(nih_paths, workers=1, progress=False)
    parallel = ImageCache(tmp_path / "b", CONTRACT)
    parallel.build(nih_paths, workers=2, progress=False)
    np.testing.assert_array_equal(
        serial.array[serial.lookup(nih_paths)], parallel.array[parallel.lookup(nih_paths)]
    )


def test_changed_contract_uses_another_store(tmp_path, nih_paths):
    small = ImageCache(tmp_path, CONTRACT)
    small.build(nih_paths[:4], workers=1, progress=False)
    other = ImageCache(tmp_path, PreprocessContract(size=32, resize="letterbox"))
    assert other.directory != small.directory
    assert (other.lookup(nih_paths[:4]) == -1).all()  # nothing reused from another contract
    other.build(nih_paths[:4], workers=1, progress=False)
    assert other.array.shape == (4, 32, 32)
    bigger = ImageCache(tmp_path, PreprocessContract(size=48))
    bigger.build(nih_paths[:2], workers=1, progress=False)
    assert bigger.array.shape == (2, 48, 48)
    # normalisation (stage 2) does not change what is cached
    assert ImageCache(tmp_path, PreprocessContract(size=32, mean=0.4)).directory == small.directory


def test_incremental_build_reuses_rows(tmp_path, nih_paths):
    cache = ImageCache(tmp_path, CONTRACT)
    cache.build(nih_paths[:10], workers=1, progress=False)
    before = np.array(cache.array[cache.lookup(nih_paths[:10])])
    again = ImageCache(tmp_path, CONTRACT)
    report = again.build(nih_paths, workers=1, progress=False)
    assert (report.reused, report.added) == (10, 14)
    np.testing.assert_array_equal(again.lookup(nih_paths[:10]), cache.lookup(nih_paths[:10]))
    np.testing.assert_array_equal(again.array[again.lookup(nih_paths[:10])], before)
    assert len(again) == 24


def test_changed_file_is_decoded_again(tmp_path, nih_paths):
    import shutil

    from PIL import Image

    target = tmp_path / "img.png"
    shutil.copy(nih_paths[0], target)
    cache = ImageCache(tmp_path / "cache", CONTRACT)
    cache.build([target], workers=1, progress=False)
    first = cache.get(target).copy()
    Image.open(nih_paths[1]).save(target)  # same path, other pixels
    report = cache.build([target], workers=1, progress=False)
    assert report.added == 1 and report.reused == 0
    np.testing.assert_array_equal(cache.get(target), decode_to_uint8(nih_paths[1], CONTRACT))
    assert not np.array_equal(cache.get(target), first)


def test_bad_files_are_recorded_not_fatal(tmp_path, nih_paths):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(Path(nih_paths[0]).read_bytes()[:200])
    missing = tmp_path / "missing.png"
    paths = [nih_paths[0], str(empty), str(text), str(truncated), str(missing), nih_paths[1]]
    cache = ImageCache(tmp_path / "cache", CONTRACT)
    report = cache.build(paths, workers=1, progress=False)
    assert report.added == 2 and report.failed == 4
    errors = cache.errors
    assert set(errors) == {str(empty), str(text), str(truncated), str(missing)}
    for path, message in errors.items():
        assert path in message
    assert list(cache.lookup(paths)) == [0, -1, -1, -1, -1, 1]
    # the error list survives reopening
    assert set(ImageCache(tmp_path / "cache", CONTRACT).errors) == set(errors)


def test_uint8dataset_reads_rows_and_falls_back(tmp_path, synthetic_dir):
    dataset = CSVDataset(synthetic_dir / "labels.csv")
    cache = ImageCache(tmp_path, CONTRACT)
    cache.build(dataset.paths[:10], workers=1, progress=False)
    ds = UInt8Dataset(dataset, CONTRACT, cache=cache)
    for i in (0, 9, 10, 50):  # cached and not cached rows
        np.testing.assert_array_equal(ds.image(i), decode_to_uint8(dataset.paths[i], CONTRACT))
    image, labels, index = ds[3]
    assert image.dtype == torch.uint8 and image.shape == (32, 32) and index == 3
    np.testing.assert_array_equal(labels.numpy(), dataset.labels[3])
    # picklable for DataLoader workers without copying the map
    clone = pickle.loads(pickle.dumps(cache))
    np.testing.assert_array_equal(clone.array[0], cache.array[0])
