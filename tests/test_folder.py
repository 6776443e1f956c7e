"""Tests for striate.datasets.ImageFolder: layout, formats, conversion, resizing and refused files.

Every image is written here with Pillow into pytest's tmp_path.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st_
from PIL import Image

from striate.datasets import DataLoader, ImageFolder
from striate.datasets.folder import decode_image


def rgb(rng, h=6, w=5):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path, array, fmt=None, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    img.save(path, format=fmt)
    return path


@pytest.fixture
def tree(tmp_path, rng):
    """cat: 2 PNG (RGB, gray) + a nested JPEG; dog: BMP + GIF; ignored: .txt, hidden file, hidden folder."""
    root = tmp_path / "pets"
    arrays = {
        "cat/a.png": rgb(rng),
        "cat/b.PNG": rng.integers(0, 256, (6, 5), dtype=np.uint8),
        "cat/sub/c.jpg": rgb(rng),
        "dog/d.bmp": rgb(rng),
        "dog/e.gif": rng.integers(0, 256, (6, 5), dtype=np.uint8),
    }
    for rel, a in arrays.items():
        save(root / rel, a)
    (root / "cat" / "notes.txt").write_text("not an image")
    save(root / "dog" / ".hidden.png", rgb(rng))
    save(root / ".cache" / "x.png", rgb(rng))
    (root / "README.png.txt").write_text("ignored")
    return root, arrays


def test_layout_classes_and_order(tree):
    root, _ = tree
    ds = ImageFolder(root)
    assert ds.classes == ["cat", "dog"]
    assert ds.class_to_idx == {"cat": 0, "dog": 1}
    assert len(ds) == 5
    names = [p.replace(str(root) + "/", "") for p, _ in ds.samples]
    assert names == ["cat/a.png", "cat/b.PNG", "cat/sub/c.jpg", "dog/d.bmp", "dog/e.gif"]
    assert ds.targets.tolist() == [0, 0, 0, 1, 1] and ds.targets.dtype == np.int64
    assert "2 classes" in repr(ds)


def test_classes_are_sorted_by_name(tmp_path, rng):
    for name in ("zebra", "Ant", "bee"):
        save(tmp_path / name / "1.png", rgb(rng))
    assert ImageFolder(tmp_path).classes == ["Ant", "bee", "zebra"]


def test_png_rgb_and_gray_are_exact(tree):
    root, arrays = tree
    ds = ImageFolder(root)
    x, y = ds[0]
    assert x.dtype == np.float32 and x.shape == (3, 6, 5) and y == 0 and isinstance(y, int)
    np.testing.assert_array_equal(x, arrays["cat/a.png"].transpose(2, 0, 1) / np.float32(255))
    g, _ = ds[1]  # grayscale file, 3 channels asked: replicated
    expected = arrays["cat/b.PNG"] / np.float32(255)
    assert g.shape == (3, 6, 5)
    for c in range(3):
        np.testing.assert_array_equal(g[c], expected)
    x_bmp, y_bmp = ds[3]
    np.testing.assert_array_equal(x_bmp, arrays["dog/d.bmp"].transpose(2, 0, 1) / np.float32(255))
    assert y_bmp == 1


def test_jpeg_and_gif_decode(tree):
    root, arrays = tree
    ds = ImageFolder(root)
    x, _ = ds[2]
    ref = np.asarray(Image.open(root / "cat/sub/c.jpg").convert("RGB")).transpose(2, 0, 1) / np.float32(255)
    np.testing.assert_array_equal(x, ref)
    gif, _ = ImageFolder(root, channels=1)[4]
    assert gif.shape == (1, 6, 5)
    np.testing.assert_allclose(gif[0], arrays["dog/e.gif"] / 255.0, atol=4 / 255)  # palette quantisation
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_channels_1_uses_luma(tree):
    root, arrays = tree
    x, _ = ImageFolder(root, channels=1)[0]
    ref = np.asarray(Image.fromarray(arrays["cat/a.png"]).convert("L")) / np.float32(255)
    assert x.shape == (1, 6, 5)
    np.testing.assert_array_equal(x[0], ref)
    a = arrays["cat/a.png"].astype(np.float64)
    np.testing.assert_allclose(x[0], (0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]) / 255, atol=1 / 255)


def test_image_size_resizes_bilinear(tree):
    root, arrays = tree
    ds = ImageFolder(root, image_size=(4, 8))
    x, _ = ds[0]
    ref = Image.fromarray(arrays["cat/a.png"]).resize((8, 4), Image.Resampling.BILINEAR)
    assert x.shape == (3, 4, 8)
    np.testing.assert_array_equal(x, np.asarray(ref).transpose(2, 0, 1) / np.float32(255))
    assert ImageFolder(root, image_size=7)[0][0].shape == (3, 7, 7)


def test_load_gives_arrays(tree):
    root, _ = tree
    ds = ImageFolder(root, channels=1)
    x, y = ds.load()
    assert x.shape == (5, 1, 6, 5) and x.dtype == np.float32 and y.dtype == np.int64
    assert y.tolist() == [0, 0, 0, 1, 1]
    for i in range(5):
        np.testing.assert_array_equal(x[i], ds[i][0])


def test_mixed_sizes_need_image_size(tmp_path, rng):
    save(tmp_path / "a" / "1.png", rgb(rng, 6, 5))
    save(tmp_path / "a" / "2.png", rgb(rng, 7, 5))
    ds = ImageFolder(tmp_path)
    assert ds[1][0].shape == (3, 7, 5)  # one at a time is fine
    with pytest.raises(ValueError, match=r"2\.png is 7x5 but .*1\.png is 6x5; pass image_size"):
        ds.load()
    assert ImageFolder(tmp_path, image_size=(6, 6)).load()[0].shape == (2, 3, 6, 6)


def test_sixteen_bit_png_and_alpha_and_palette_transparency(tmp_path, rng):
    deep = (rng.integers(0, 65536, (4, 3))).astype(np.uint16)
    save(tmp_path / "a" / "deep.png", deep)
    rgba = rng.integers(0, 256, (4, 3, 4), dtype=np.uint8)
    save(tmp_path / "a" / "rgba.png", rgba)
    pal = Image.fromarray(rng.integers(0, 4, (4, 3), dtype=np.uint8), mode="L").convert("P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "a" / "pal.png", transparency=0)
    ds = ImageFolder(tmp_path, channels=1)
    by_name = {p.rsplit("/", 1)[1]: i for i, (p, _) in enumerate(ds.samples)}
    x, _ = ds[by_name["deep.png"]]
    np.testing.assert_allclose(x[0], deep / 65535.0, rtol=0, atol=1e-7)
    x, _ = ImageFolder(tmp_path)[by_name["rgba.png"]]
    np.testing.assert_array_equal(x, rgba[..., :3].transpose(2, 0, 1) / np.float32(255))
    x, _ = ImageFolder(tmp_path)[by_name["pal.png"]]  # no palette-transparency warning (warnings are errors)
    assert x.shape == (3, 4, 3)


def test_loader_over_folder(tree):
    root, _ = tree
    ds = ImageFolder(root, image_size=(6, 5))
    x, y = ds.load()
    batches = list(DataLoader(ds, batch_size=2, shuffle=False))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)


# --- refused files -----------------------------------------------------------------------


def test_corrupt_png_names_its_path(tmp_path, rng):
    good = save(tmp_path / "a" / "good.png", rgb(rng, 20, 20))
    bad = tmp_path / "a" / "truncated.png"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    ds = ImageFolder(tmp_path)
    with pytest.raises(ValueError, match=r"truncated\.png: cannot read this image"):
        ds.load()
    with pytest.raises(ValueError, match=r"truncated\.png"):
        ds[1]


def test_non_image_with_image_extension(tmp_path, rng):
    save(tmp_path / "a" / "ok.png", rgb(rng))
    (tmp_path / "a" / "fake.jpg").write_text("this is a text file")
    with pytest.raises(ValueError, match=r"fake\.jpg: cannot read this image"):
        ImageFolder(tmp_path).load()


def test_other_formats_are_not_parsed_even_when_named_png(tmp_path, rng):
    save(tmp_path / "a" / "tiff.png", rgb(rng), fmt="TIFF")
    with pytest.raises(ValueError, match=r"tiff\.png: cannot read this image"):
        ImageFolder(tmp_path)[0]


def test_decompression_bomb_limit_stays_on(tmp_path, rng, monkeypatch):
    save(tmp_path / "a" / "big.png", rgb(rng, 10, 10))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 100 pixels > twice the limit: refused
    with pytest.raises(ValueError, match=r"big\.png: cannot read this image \(DecompressionBombError"):
        ImageFolder(tmp_path)[0]


def test_missing_file_after_scan(tmp_path, rng):
    p = save(tmp_path / "a" / "gone.png", rgb(rng))
    ds = ImageFolder(tmp_path)
    p.unlink()
    with pytest.raises(ValueError, match=r"gone\.png: cannot read this image \(FileNotFoundError"):
        ds[0]


# --- images too small for image_size -------------------------------------------------------


def gray(rng, h, w):
    return rng.integers(0, 256, (h, w), dtype=np.uint8)


def test_modest_upscaling_still_works(tmp_path, rng):
    a28 = gray(rng, 28, 28)
    save(tmp_path / "a" / "digit.png", a28)
    save(tmp_path / "a" / "eight.png", gray(rng, 8, 8))  # exactly 4 times: the default limit, allowed
    ds = ImageFolder(tmp_path, image_size=32, channels=1)
    x, _ = ds.load()
    assert x.shape == (2, 1, 32, 32)
    ref = Image.fromarray(a28).resize((32, 32), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(ds[0][0][0], np.asarray(ref) / np.float32(255))
    np.testing.assert_array_equal(x[0], ds[0][0])


def test_too_small_image_is_refused_naming_path_size_and_remedy(tmp_path, rng):
    save(tmp_path / "a" / "big.png", rgb(rng, 40, 40))
    save(tmp_path / "a" / "tiny.png", rgb(rng, 6, 5))
    ds = ImageFolder(tmp_path, image_size=32)
    assert ds[0][0].shape == (3, 32, 32)  # the scan itself decodes nothing
    message = (
        rf"{tmp_path / 'a' / 'tiny.png'} is 6x5 \(H x W\), too small for image_size 32x32: it would be "
        r"enlarged 6\.4 times, more than max_upscale=4; pass max_upscale=6\.4 or more to allow it"
    )
    with pytest.raises(ValueError, match=message):
        ds[1]
    with pytest.raises(ValueError, match=message):
        ds.load()
    with pytest.raises(ValueError, match=message):
        ds.get_batch([1, 0])
    with pytest.raises(ValueError, match=message):
        list(DataLoader(ds, batch_size=2, shuffle=False))
    x, _ = ImageFolder(tmp_path, image_size=32, max_upscale=6.4).load()  # the remedy the message names
    assert x.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"tiny\.png is 6x5 .*max_upscale=6\.39; pass max_upscale=6\.4 or"):
        ImageFolder(tmp_path, image_size=32, max_upscale=6.39)[1]
    save(tmp_path / "a" / "seven.png", rgb(rng, 7, 7))
    with pytest.raises(ValueError, match=r"seven\.png is 7x7 .* enlarged 4\.571 times, more than max_upscale=4\.57; "
                       r"pass max_upscale=4\.58 or more"):
        ImageFolder(tmp_path, image_size=32, max_upscale=4.57).load()


@pytest.mark.parametrize("h, w", [(6, 40), (40, 6)])
def test_either_side_too_small_is_refused(tmp_path, rng, h, w):
    save(tmp_path / "a" / "strip.png", rgb(rng, h, w))
    with pytest.raises(ValueError, match=rf"strip\.png is {h}x{w} \(H x W\), too small for image_size 32x32"):
        ImageFolder(tmp_path, image_size=(32, 32))[0]
    assert ImageFolder(tmp_path, image_size=(32, 32), max_upscale=6)[0][0].shape == (3, 32, 32)


def test_shrinking_is_never_limited_and_one_refuses_enlarging(tmp_path, rng):
    save(tmp_path / "a" / "1.png", rgb(rng, 100, 90))
    assert ImageFolder(tmp_path, image_size=(3, 2), max_upscale=1)[0][0].shape == (3, 3, 2)
    assert ImageFolder(tmp_path, image_size=(100, 90), max_upscale=1)[0][0].shape == (3, 100, 90)
    with pytest.raises(ValueError, match=r"1\.png is 100x90 .* enlarged 1\.011 times, more than max_upscale=1;"):
        ImageFolder(tmp_path, image_size=(100, 91), max_upscale=1)[0]


def test_infinite_max_upscale_lifts_the_limit(tmp_path, rng):
    save(tmp_path / "a" / "1.png", rgb(rng, 2, 3))
    x, _ = ImageFolder(tmp_path, image_size=64, max_upscale=math.inf)[0]
    assert x.shape == (3, 64, 64) and np.isfinite(x).all()


def test_small_images_are_fine_without_image_size(tmp_path, rng):
    save(tmp_path / "a" / "1.png", rgb(rng, 1, 2))
    x, _ = ImageFolder(tmp_path, max_upscale=1)[0]
    assert x.shape == (3, 1, 2)


@pytest.mark.parametrize(
    "h, w, size, what",
    [(1, 20, (8, 8), "tall"), (20, 1, (8, 8), "wide"), (1, 1, (2, 2), "tall and wide"), (1, 4, (2, 4), "tall")],
)
def test_single_pixel_rows_and_columns_are_not_stretched(tmp_path, rng, h, w, size, what):
    save(tmp_path / "a" / "line.png", rgb(rng, h, w))
    for limit in (4.0, math.inf):
        with pytest.raises(ValueError, match=rf"line\.png is only 1 pixel {what} \({h}x{w}, H x W\): it cannot "
                           rf"be stretched to image_size {size[0]}x{size[1]}; crop or remove it"):
            ImageFolder(tmp_path, image_size=size, max_upscale=limit)[0]


def test_single_pixel_side_that_keeps_its_size_is_fine(tmp_path, rng):
    save(tmp_path / "a" / "line.png", rgb(rng, 1, 20))
    assert ImageFolder(tmp_path, image_size=(1, 8))[0][0].shape == (3, 1, 8)
    assert ImageFolder(tmp_path, image_size=(1, 40))[0][0].shape == (3, 1, 40)


def test_an_image_without_pixels_is_refused():
    from striate.datasets.folder import _refusal

    assert _refusal("e.png", (0, 5), None, 4.0) == "e.png is 0x5 (H x W): an image without pixels"
    assert _refusal("e.png", (5, 0), (5, 5), math.inf).startswith("e.png is 5x0")
    assert _refusal("e.png", (5, 5), (5, 5), 1.0) is None


@settings(max_examples=200, deadline=None)
@given(
    hw=st_.tuples(st_.integers(1, 300), st_.integers(1, 300)),
    size=st_.tuples(st_.integers(1, 300), st_.integers(1, 300)),
    limit=st_.floats(1.0, 50.0),
)
def test_the_named_remedy_allows_the_image(hw, size, limit):
    from striate.datasets.folder import _refusal

    why = _refusal("x.png", hw, size, limit)
    too_small = max(size[0] / hw[0], size[1] / hw[1]) > limit
    thin = (hw[0] == 1 and size[0] > 1) or (hw[1] == 1 and size[1] > 1)
    assert (why is not None) == (thin or too_small)
    if why is not None and not thin:
        remedy = float(why.rsplit("pass max_upscale=", 1)[1].split(" ")[0])
        assert _refusal("x.png", hw, size, remedy) is None
        assert remedy <= max(size[0] / hw[0], size[1] / hw[1]) + 0.01


def test_a_remedy_equal_to_the_ratio_allows_the_image():
    # 253 / 55 is 4.6 while 55 * 4.6 rounds to just below 253: the rule compares ratios
    from striate.datasets.folder import _refusal

    why = _refusal("x.png", (1, 55), (1, 253), 1.0)
    assert "pass max_upscale=4.6 " in why
    assert _refusal("x.png", (1, 55), (1, 253), 4.6) is None


def test_decode_image_takes_max_upscale(tmp_path, rng):
    p = save(tmp_path / "s.png", rgb(rng, 4, 4))
    assert decode_image(p, 3, (16, 16)).shape == (3, 16, 16)
    with pytest.raises(ValueError, match=r"s\.png is 4x4 .*pass max_upscale=4\.25 or more"):
        decode_image(p, 3, (17, 17))
    assert decode_image(p, 1, (17, 17), max_upscale=4.25).shape == (1, 17, 17)


# --- bad roots and arguments ---------------------------------------------------------------


def test_bad_roots(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "nope")
    f = tmp_path / "file.png"
    f.write_bytes(b"")
    with pytest.raises(ValueError, match="is not a folder"):
        ImageFolder(f)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=rf"`root` {empty} has no class folders; expected"):
        ImageFolder(empty)
    loose = tmp_path / "loose"
    save(loose / "1.png", rgb(rng))
    with pytest.raises(ValueError, match="the images lie directly in it"):
        ImageFolder(loose)


def test_class_folder_without_images(tmp_path, rng):
    save(tmp_path / "a" / "1.png", rgb(rng))
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.txt").write_text("")
    with pytest.raises(ValueError, match=rf"class folder\(s\) with no images .*: {tmp_path / 'b'}, {tmp_path / 'c'}"):
        ImageFolder(tmp_path)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(channels=2), ValueError, "`channels` must be 1 or 3, got 2"),
        (dict(channels="3"), TypeError, "`channels` must be 1 or 3"),
        (dict(image_size=(0, 4)), ValueError, "`image_size` must be positive"),
        (dict(image_size=(4,)), TypeError, "`image_size` must be None, an int or a"),
        (dict(image_size=(4.0, 4)), TypeError, "`image_size` must hold ints"),
        (dict(max_upscale=0.5), ValueError, r"`max_upscale` must be >= 1 .*got 0\.5"),
        (dict(max_upscale=0), ValueError, "`max_upscale` must be >= 1"),
        (dict(max_upscale=float("nan")), ValueError, "`max_upscale` must be >= 1"),
        (dict(max_upscale=-math.inf), ValueError, "`max_upscale` must be >= 1"),
        (dict(max_upscale=True), TypeError, "`max_upscale` must be a number >= 1 .*got bool True"),
        (dict(max_upscale=np.bool_(True)), TypeError, "`max_upscale` must be a number"),
        (dict(max_upscale="4"), TypeError, "`max_upscale` must be a number >= 1 .*got str '4'"),
        (dict(max_upscale=None), TypeError, "`max_upscale` must be a number"),
    ],
)
def test_bad_arguments(tree, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ImageFolder(tree[0], **kwargs)


def test_max_upscale_takes_ints_and_numpy_reals(tree):
    assert ImageFolder(tree[0], max_upscale=2).max_upscale == 2.0
    assert ImageFolder(tree[0], max_upscale=np.float32(1.5)).max_upscale == 1.5
    assert "max_upscale=inf" in repr(ImageFolder(tree[0], max_upscale=math.inf))
    with pytest.raises(TypeError):
        ImageFolder(tree[0], None, 3, 4.0)  # keyword only: root, image_size, channels keep their places


def test_bad_root_type_and_index(tree):
    with pytest.raises(TypeError, match="`root` must be a str or path-like"):
        ImageFolder(3)
    ds = ImageFolder(tree[0])
    with pytest.raises(IndexError, match="index 5 is out of range for 5 images"):
        ds[5]
    with pytest.raises(TypeError, match="index must be an int"):
        ds["a"]
    assert decode_image(ds.samples[0][0], 1).shape == (1, 6, 5)


# --- fuzz ----------------------------------------------------------------------------------


def _seed_files():
    rng = np.random.default_rng(7)
    out = []
    for fmt, mode in (("PNG", "RGB"), ("PNG", "L"), ("JPEG", "RGB"), ("BMP", "RGB"), ("GIF", "P")):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).convert(mode).save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


SEED_FILES = _seed_files()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st_.integers(0, len(SEED_FILES) - 1),
    flips=st_.lists(st_.tuples(st_.integers(0, 10**6), st_.integers(0, 255)), max_size=6),
    cut=st_.one_of(st_.none(), st_.integers(0, 10**6)),
    channels=st_.sampled_from([1, 3]),
    size=st_.one_of(st_.none(), st_.tuples(st_.integers(1, 12), st_.integers(1, 12))),
)
def test_fuzz_decode_gives_an_image_or_a_value_error(tmp_path, which, flips, cut, channels, size):
    data = bytearray(SEED_FILES[which])
    for pos, val in flips:
        data[pos % len(data)] = val
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    path = tmp_path / "fuzz.img"
    path.write_bytes(bytes(data))
    try:
        x = decode_image(path, channels, size)
    except ValueError as exc:
        assert str(path) in str(exc)
        return
    assert x.dtype == np.float32 and x.ndim == 3 and x.shape[0] == channels
    if size is not None:
        assert x.shape[1:] == size
    assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
