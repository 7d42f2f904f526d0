import numpy as np
import pytest
from conftest import TINY, write_images

import calibration
from calibration.images import Preprocess
from calibration.reader import CalibrationReader
from compress.core.errors import UserError


def test_labels_txt_and_image_folder_layouts(tmp_path):
    a = calibration.load(write_images(tmp_path / "a", 3, seed=0, layout="labels"), TINY)
    b = calibration.load(write_images(tmp_path / "b", 3, seed=0, layout="folders"), TINY)
    assert a.pixels.shape == b.pixels.shape == (12, 32, 32, 3)
    assert a.pixels.dtype == np.uint8
    assert sorted(a.labels.tolist()) == sorted(b.labels.tolist()) == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    # Same generator seed: the same pictures, whatever the layout.
    assert sorted(a.hashes) == sorted(b.hashes)


def test_corrupt_image_is_skipped_and_counted(tmp_path, capsys):
    root = write_images(tmp_path / "d", 2, seed=0)
    (root / "images" / "0_0.png").write_bytes(b"not a png")
    with open(root / "labels.txt", "a") as f:
        f.write("images/missing.png 1\n")
    images = calibration.load(root, TINY)
    assert len(images) == 7
    assert sorted(images.skipped) == ["images/0_0.png", "images/missing.png"]
    assert "skipped 2 unreadable" in capsys.readouterr().err


def test_no_usable_images_is_a_user_error(tmp_path):
    root = tmp_path / "empty"
    (root / "images").mkdir(parents=True)
    (root / "images" / "x.jpg").write_bytes(b"junk")
    (root / "labels.txt").write_text("images/x.jpg 0\n")
    with pytest.raises(UserError, match="no usable images"):
        calibration.load(root, TINY)
    with pytest.raises(UserError, match="not found"):
        calibration.load(tmp_path / "nowhere", TINY)
    (tmp_path / "bare").mkdir()
    with pytest.raises(UserError, match="no images found"):
        calibration.load(tmp_path / "bare", TINY)


def test_bad_labels_line_names_the_line(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "labels.txt").write_text("a.png zero\n")
    with pytest.raises(UserError, match="labels.txt:1"):
        calibration.list_images(root)


def test_cache_is_reused_and_keyed_by_content(tmp_path):
    root = write_images(tmp_path / "c", 2, seed=0)
    cache = tmp_path / "cache"
    first = calibration.load(root, TINY, cache_dir=cache)
    assert len(list(cache.glob("images-*.npz"))) == 1
    again = calibration.load(root, TINY, cache_dir=cache)
    assert again.key == first.key and np.array_equal(again.pixels, first.pixels)
    from PIL import Image

    Image.new("RGB", (40, 40), "white").save(root / "images" / "0_0.png")
    changed = calibration.load(root, TINY, cache_dir=cache)
    assert changed.key != first.key
    assert len(list(cache.glob("images-*.npz"))) == 2


def test_limit_samples_across_classes(tmp_path):
    root = write_images(tmp_path / "s", 10, seed=0)
    subset = calibration.load(root, TINY, limit=8)
    assert len(subset) == 8
    assert len(set(subset.labels.tolist())) > 1  # not just the first class of a sorted folder
    assert calibration.load(root, TINY, limit=8).names == subset.names


def test_a_sample_of_a_set_is_what_load_picks_and_take_keeps_each_image_whole(tmp_path):
    root = write_images(tmp_path / "t", 10, seed=0)
    every = calibration.load(root, TINY)
    assert sorted(every.sample(8).names) == sorted(calibration.load(root, TINY, limit=8).names)
    part = every.take([5, 1, 7], "three")
    assert part.names == [every.names[i] for i in (5, 1, 7)] and part.hashes == [every.hashes[i] for i in (5, 1, 7)]
    assert np.array_equal(part.pixels[1], every.pixels[1]) and part.labels.tolist() == every.labels[[5, 1, 7]].tolist()
    assert part.key == f"{every.key}[three]" != every.key


def test_preprocess_matches_torchvision():
    torch = pytest.importorskip("torch")
    from PIL import Image
    from torchvision import transforms

    rng = np.random.default_rng(0)
    pre = Preprocess()
    tv = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize(pre.mean, pre.std)])
    for shape in [(300, 400, 3), (500, 333, 3), (227, 227, 3)]:
        img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        ours = pre.normalize(pre.transform(img)[None])[0]
        ref = tv(img).numpy()
        assert ours.shape == ref.shape == (3, 224, 224)
        # torchvision rounds the resized image to uint8 as we do; the rest is float arithmetic
        np.testing.assert_allclose(ours, ref, atol=1e-5)
    del torch


def test_calibration_reader_serves_ranges(tmp_path):
    images = calibration.load(write_images(tmp_path / "r", 5, seed=0), TINY)  # 20 images
    reader = CalibrationReader(images, TINY, "input", batch_size=8, progress=None)
    assert len(reader) == 3
    shapes = []
    while (feed := reader.get_next()) is not None:
        shapes.append(feed["input"].shape)
    assert shapes == [(8, 3, 32, 32), (8, 3, 32, 32), (4, 3, 32, 32)]
    reader.set_range(1, 2)
    assert reader.get_next()["input"].shape == (8, 3, 32, 32) and reader.get_next() is None


def test_overlap_by_content(tmp_path):
    a = calibration.load(write_images(tmp_path / "a", 2, seed=0), TINY)
    b = calibration.load(write_images(tmp_path / "b", 2, seed=0, layout="folders"), TINY)
    c = calibration.load(write_images(tmp_path / "c", 2, seed=9), TINY)
    assert len(calibration.overlap(a, b)) == 8
    assert calibration.overlap(a, c) == []
