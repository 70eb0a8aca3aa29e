"""ldseg_rt.io (images, volumes, pairs): every format round-trips, labels stay class ids, pairing by name, clear errors
on bad files, and writes that leave no partial file behind."""
import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from ldseg_rt.errors import DatasetError, ImageTypeError, InvalidImageError
from ldseg_rt.io import images
from ldseg_rt.io import pairs as pairing
from ldseg_rt.io import nifti

DEMO = Path(__file__).resolve().parents[3] / "shared" / "data" / "ldseg-demo"


def random_pixels(rng, dtype, shape):
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


def save_nifti(path, data, spacing):
    img = nib.Nifti1Image(data, np.diag([*spacing[:3], 1.0]))
    img.header.set_zooms(spacing)
    nib.save(img, path)


# --- images -------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix,dtype,shape", [
    (".png", np.uint8, (23, 31)),
    (".png", np.uint8, (23, 31, 3)),
    (".png", np.uint16, (23, 31)),
    (".bmp", np.uint8, (23, 31)),
    (".bmp", np.uint8, (23, 31, 3)),
    (".tif", np.uint8, (23, 31)),
    (".tiff", np.uint8, (23, 31, 3)),
    (".tif", np.uint16, (23, 31)),
    (".tif", np.int32, (23, 31)),
    (".tif", np.float32, (23, 31)),
])
def test_pillow_formats_round_trip(tmp_path, rng, suffix, dtype, shape):
    pixels = random_pixels(rng, dtype, shape)
    path = tmp_path / f"img{suffix}"
    Image.fromarray(pixels).save(path)
    back = images.read_image(path)
    assert back.dtype == dtype and back.shape == shape
    np.testing.assert_array_equal(back, pixels)


@pytest.mark.parametrize("dtype,shape", [(np.float64, (9, 7)), (np.int16, (9, 7, 4)), (np.uint8, (9, 7, 3))])
def test_npy_round_trip(tmp_path, rng, dtype, shape):
    pixels = random_pixels(rng, dtype, shape)
    np.save(tmp_path / "img.npy", pixels)
    back = images.read_image(tmp_path / "img.npy")
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, pixels)


def test_big_endian_npy_comes_back_native(tmp_path, rng):
    pixels = random_pixels(rng, np.int16, (5, 6)).astype(">i2")
    np.save(tmp_path / "img.npy", pixels)
    back = images.read_image(tmp_path / "img.npy")
    assert back.dtype == np.int16 and back.dtype.isnative
    np.testing.assert_array_equal(back, pixels)


def test_rgba_drops_alpha(tmp_path, rng):
    pixels = random_pixels(rng, np.uint8, (12, 10, 4))
    Image.fromarray(pixels).save(tmp_path / "img.png")
    np.testing.assert_array_equal(images.read_image(tmp_path / "img.png"), pixels[..., :3])


def test_one_bit_image_reads_as_0_1(tmp_path, rng):
    mask = rng.integers(0, 2, size=(8, 9)).astype(bool)
    Image.fromarray(mask).save(tmp_path / "mask.png")
    back = images.read_image(tmp_path / "mask.png")
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, mask)


def test_palette_png_keeps_indices(tmp_path, rng):
    indices = rng.integers(0, 4, size=(11, 13), dtype=np.uint8)
    img = Image.new("P", (13, 11))
    img.putdata(indices.ravel().tolist())
    img.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30, 30, 30, 200])  # colours unlike the ids
    img.save(tmp_path / "label.png")
    np.testing.assert_array_equal(images.read_image(tmp_path / "label.png"), indices)
    np.testing.assert_array_equal(images.read_label(tmp_path / "label.png"), indices)


# --- labels -------------------------------------------------------------------------------

def test_label_png_and_16_bit_label(tmp_path, rng):
    ids = rng.integers(0, 5, size=(10, 12), dtype=np.uint8)
    Image.fromarray(ids).save(tmp_path / "a.png")
    wide = rng.integers(0, 1000, size=(10, 12), dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "b.png")
    for path, expected in [("a.png", ids), ("b.png", wide)]:
        back = images.read_label(tmp_path / path)
        assert back.dtype == expected.dtype
        np.testing.assert_array_equal(back, expected)


def test_grey_rgb_label_becomes_one_channel(tmp_path, rng):
    ids = rng.integers(0, 3, size=(10, 12), dtype=np.uint8)
    Image.fromarray(np.stack([ids] * 3, axis=-1)).save(tmp_path / "label.bmp")
    back = images.read_label(tmp_path / "label.bmp")
    assert back.shape == (10, 12) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, ids)


def test_colour_label_is_refused(tmp_path, rng):
    colours = random_pixels(rng, np.uint8, (10, 12, 3))
    colours[0, 0] = (1, 2, 3)  # at least one pixel whose channels differ
    Image.fromarray(colours).save(tmp_path / "label.png")
    with pytest.raises(InvalidImageError, match="label.png.*single-channel class ids"):
        images.read_label(tmp_path / "label.png")


@pytest.mark.parametrize("high,dtype", [(7, np.uint8), (300, np.int64)])
def test_integral_float_label_is_cast(tmp_path, rng, high, dtype):
    ids = rng.integers(0, high, size=(6, 8))
    np.save(tmp_path / "label.npy", ids.astype(np.float32))
    back = images.read_label(tmp_path / "label.npy")
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, ids)


@pytest.mark.parametrize("bad", [0.5, np.nan, np.inf])
def test_non_integral_float_label_is_refused(tmp_path, rng, bad):
    values = rng.integers(0, 3, size=(6, 8)).astype(np.float32)
    values[2, 3] = bad
    np.save(tmp_path / "label.npy", values)
    with pytest.raises(InvalidImageError, match="label.npy.*integral class ids"):
        images.read_label(tmp_path / "label.npy")


# --- volumes ------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_nifti_round_trip_with_spacing(tmp_path, rng, suffix, dtype):
    data = random_pixels(rng, dtype, (7, 9, 5))
    spacing = (0.5, 0.8, 2.5)
    save_nifti(tmp_path / f"vol{suffix}", data, spacing)
    back, back_spacing = nifti.read_volume(tmp_path / f"vol{suffix}")
    assert back.dtype == dtype and back.shape == data.shape
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(back_spacing, spacing, rtol=1e-6)
    assert all(type(s) is float for s in back_spacing)


def test_npy_volume_has_unit_spacing(tmp_path, rng):
    data = random_pixels(rng, np.float32, (4, 5, 6))
    np.save(tmp_path / "vol.npy", data)
    back, spacing = nifti.read_volume(tmp_path / "vol.npy")
    np.testing.assert_array_equal(back, data)
    assert spacing == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("name,shape", [("vol.npy", (4, 5)), ("vol.npy", (2, 3, 4, 5)), ("vol.nii.gz", (4, 5, 6, 2))])
def test_volume_must_be_3d(tmp_path, name, shape):
    data = np.zeros(shape, np.int16)
    if name.endswith(".npy"):
        np.save(tmp_path / name, data)
    else:
        save_nifti(tmp_path / name, data, (1.0,) * len(shape))
    with pytest.raises(InvalidImageError, match=f"{name}: volume must be 3-D"):
        nifti.read_volume(tmp_path / name)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_volume_slices(rng, axis):
    volume = random_pixels(rng, np.int16, (4, 5, 6))
    slices = nifti.volume_slices(volume, axis)
    assert len(slices) == volume.shape[axis]
    for i, s in enumerate(slices):
        assert s.ndim == 2
        np.testing.assert_array_equal(s, np.take(volume, i, axis=axis))


def test_volume_slices_bad_input():
    with pytest.raises(ValueError, match="axis must be"):
        nifti.volume_slices(np.zeros((2, 3, 4)), axis=3)
    with pytest.raises(ValueError, match="must be 3-D"):
        nifti.volume_slices(np.zeros((2, 3)))


# --- pairing ------------------------------------------------------------------------------

def touch(directory, *names):
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(b"")


@pytest.mark.parametrize("suffix", ["", *pairing.LABEL_SUFFIXES])
def test_find_pairs_each_label_suffix(tmp_path, suffix):
    touch(tmp_path / "img", "Case1.png", "Case2.nii.gz")
    touch(tmp_path / "lab", f"Case1{suffix}.png", f"Case2{suffix}.nii.gz")
    assert pairing.find_pairs(tmp_path / "img", tmp_path / "lab") == [
        (tmp_path / "img" / "Case1.png", tmp_path / "lab" / f"Case1{suffix}.png"),
        (tmp_path / "img" / "Case2.nii.gz", tmp_path / "lab" / f"Case2{suffix}.nii.gz"),
    ]


def test_find_pairs_natural_order_and_ignored_files(tmp_path):
    cases = ["Case10", "Case2", "Case1", "case3", "Case21"]
    touch(tmp_path / "img", *(f"{c}.bmp" for c in cases), "._Case1.bmp", "notes.txt")
    touch(tmp_path / "lab", *(f"{c}_label.png" for c in cases), "Case99_label.png")
    (tmp_path / "img" / "sub.png").mkdir()
    pairs = pairing.find_pairs(tmp_path / "img", tmp_path / "lab")
    assert [image.stem for image, _ in pairs] == ["Case1", "Case2", "case3", "Case10", "Case21"]
    assert all(label.name == f"{image.stem}_label.png" for image, label in pairs)


def test_find_pairs_lists_images_without_label(tmp_path):
    touch(tmp_path / "img", *(f"Case{i}.png" for i in range(1, 9)))
    touch(tmp_path / "lab", "Case1_label.png", "Case1x_label.png")
    with pytest.raises(DatasetError, match=r"7 image\(s\) .* no label .*: Case2.png, Case3.png, .*, \.\.\.$"):
        pairing.find_pairs(tmp_path / "img", tmp_path / "lab")


def test_find_pairs_refuses_two_labels_for_one_image(tmp_path):
    touch(tmp_path / "img", "Case1.png")
    touch(tmp_path / "lab", "Case1_label.png", "Case1_mask.png")
    with pytest.raises(DatasetError, match="Case1.png: several labels match: Case1_label.png, Case1_mask.png"):
        pairing.find_pairs(tmp_path / "img", tmp_path / "lab")


def test_find_pairs_empty_and_missing_directories(tmp_path):
    touch(tmp_path / "img", "Case1.png")
    touch(tmp_path / "empty", "readme.txt")
    with pytest.raises(DatasetError, match="no image files"):
        pairing.find_pairs(tmp_path / "empty", tmp_path / "img")
    with pytest.raises(DatasetError, match="no label files"):
        pairing.find_pairs(tmp_path / "img", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="image directory not found"):
        pairing.find_pairs(tmp_path / "nowhere", tmp_path / "img")
    with pytest.raises(FileNotFoundError, match="label directory not found"):
        pairing.find_pairs(tmp_path / "img", tmp_path / "nowhere")


# --- bad files ----------------------------------------------------------------------------

READERS = [images.read_image, images.read_label, nifti.read_volume]


@pytest.mark.parametrize("reader", READERS)
def test_missing_file(tmp_path, reader):
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        reader(tmp_path / "missing.npy")


@pytest.mark.parametrize("reader,name", [(images.read_image, "img.jpg"), (images.read_label, "label.txt"),
                                         (images.read_image, "vol.nii.gz"), (nifti.read_volume, "vol.png")])
def test_unsupported_extension(tmp_path, reader, name):
    (tmp_path / name).write_bytes(b"whatever")
    with pytest.raises(InvalidImageError, match=f"{name}: unsupported .* format"):
        reader(tmp_path / name)


@pytest.mark.parametrize("name", ["img.png", "img.bmp", "img.tif", "img.npy", "vol.nii", "vol.nii.gz"])
@pytest.mark.parametrize("contents", ["empty", "random", "truncated"])
def test_corrupt_file(tmp_path, rng, name, contents):
    path = tmp_path / name
    if contents == "empty":
        path.write_bytes(b"")
    elif contents == "random":
        path.write_bytes(rng.bytes(2000))
    else:
        pixels = random_pixels(rng, np.uint8, (40, 30, 3) if name.startswith("img") else (20, 30, 10))
        if name.startswith("vol"):
            save_nifti(path, pixels, (1.0, 1.0, 1.0))
        elif name.endswith(".npy"):
            np.save(path, pixels)
        else:
            Image.fromarray(pixels).save(path)
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    reader = nifti.read_volume if name.startswith("vol") else images.read_image
    with pytest.raises(InvalidImageError, match=f"{name}: cannot read"):
        reader(path)


def test_contents_must_match_extension(tmp_path, rng):
    Image.fromarray(random_pixels(rng, np.uint8, (8, 8))).save(tmp_path / "img.bmp")
    os.replace(tmp_path / "img.bmp", tmp_path / "img.png")
    with pytest.raises(InvalidImageError, match="img.png: cannot read"):
        images.read_image(tmp_path / "img.png")


def test_gzip_that_is_not_nifti(tmp_path):
    (tmp_path / "vol.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 50))
    with pytest.raises(InvalidImageError, match="vol.nii.gz: cannot read"):
        nifti.read_volume(tmp_path / "vol.nii.gz")


@pytest.mark.parametrize("array,error,match", [
    (np.zeros(5, np.uint8), InvalidImageError, r"\(H, W\) or \(H, W, C\)"),
    (np.zeros((2, 3, 4, 5), np.uint8), InvalidImageError, r"\(H, W\) or \(H, W, C\)"),
    (np.zeros((0, 4), np.uint8), InvalidImageError, "non-empty"),
    (np.array([["a", "b"]]), ImageTypeError, "not a real numeric type"),
    (np.zeros((2, 2), np.complex64), ImageTypeError, "not a real numeric type"),
])
def test_npy_with_unusable_array(tmp_path, array, error, match):
    np.save(tmp_path / "img.npy", array)
    with pytest.raises(error, match=match):
        images.read_image(tmp_path / "img.npy")


def test_pickled_npy_is_not_loaded(tmp_path):
    np.save(tmp_path / "img.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidImageError, match="img.npy: cannot read"):
        images.read_image(tmp_path / "img.npy")


def test_multi_page_tiff_is_refused(tmp_path, rng):
    pages = [Image.fromarray(random_pixels(rng, np.uint8, (6, 6))) for _ in range(3)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(InvalidImageError, match="stack.tif: has 3 frames"):
        images.read_image(tmp_path / "stack.tif")


# --- writing ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(13, 17), (13, 17, 3)])
def test_write_png_round_trip_and_overwrite(tmp_path, rng, shape):
    path = tmp_path / "a" / "b" / "out.png"
    for _ in range(2):  # the second write replaces the first
        pixels = random_pixels(rng, np.uint8, shape)
        images.write_png(path, pixels)
        np.testing.assert_array_equal(images.read_image(path), pixels)
    assert os.listdir(path.parent) == ["out.png"]


def test_write_label_png_round_trip(tmp_path, rng):
    label = rng.integers(0, 256, size=(9, 11))  # int64 class ids
    images.write_label_png(tmp_path / "labels" / "Case1_label.png", label)
    back = images.read_label(tmp_path / "labels" / "Case1_label.png")
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, label)


@pytest.mark.parametrize("write,array,error,match", [
    (images.write_png, np.zeros((4, 4), np.float32), ImageTypeError, "uint8"),
    (images.write_png, np.zeros((4, 4, 4), np.uint8), InvalidImageError, r"\(H, W, 3\)"),
    (images.write_png, np.zeros((0, 4), np.uint8), InvalidImageError, "non-empty"),
    (images.write_label_png, np.zeros((4, 4), np.float32), ImageTypeError, "integer class ids"),
    (images.write_label_png, np.zeros((4, 4, 3), np.uint8), InvalidImageError, r"\(H, W\)"),
    (images.write_label_png, np.full((4, 4), 256), InvalidImageError, "0..255"),
    (images.write_label_png, np.full((4, 4), -1), InvalidImageError, "0..255"),
])
def test_write_refuses_bad_arrays_without_creating_anything(tmp_path, write, array, error, match):
    with pytest.raises(error, match=match):
        write(tmp_path / "out" / "x.png", array)
    assert not (tmp_path / "out").exists()


def test_write_png_needs_png_name(tmp_path):
    with pytest.raises(InvalidImageError, match="writes .png files"):
        images.write_png(tmp_path / "x.bmp", np.zeros((4, 4), np.uint8))


def failing_save(img, f, format):
    f.write(b"\x89PNG half")
    raise OSError("disk full")


def failing_replace(src, dst):
    raise OSError("rename failed")


@pytest.mark.parametrize("where,patch", [("PIL.Image.Image.save", failing_save),
                                         ("ldseg_rt.io.atomic.os.replace", failing_replace)])
def test_failed_write_leaves_no_file(tmp_path, monkeypatch, where, patch):
    old = np.full((4, 4), 7, np.uint8)
    images.write_png(tmp_path / "kept.png", old)
    monkeypatch.setattr(where, patch)
    for name in ["kept.png", "new.png"]:
        with pytest.raises(OSError, match="disk full|rename failed"):
            images.write_label_png(tmp_path / name, np.ones((4, 4), np.uint8))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["kept.png"]  # no new file, no temporary left over
    np.testing.assert_array_equal(images.read_image(tmp_path / "kept.png"), old)


# --- real data ----------------------------------------------------------------------------

@pytest.mark.skipif(not DEMO.is_dir(), reason=f"demo data not found at {DEMO}")
def test_demo_data():
    knee, spacing = nifti.read_volume(DEMO / "Knee" / "Image" / "Case1.nii.gz")
    knee_label, label_spacing = nifti.read_volume(DEMO / "Knee" / "Label" / "Case1_label.nii.gz")
    assert knee.shape == knee_label.shape == (240, 104, 160)
    assert np.issubdtype(knee.dtype, np.integer) and np.issubdtype(knee_label.dtype, np.integer)
    assert spacing == label_spacing == (1.0, 1.0, 1.0)
    assert set(np.unique(knee_label).tolist()) == {0, 1, 2}
    assert len(nifti.volume_slices(knee)) == 160

    glas = images.read_image(DEMO / "GlaS" / "Image" / "Case1.bmp")
    glas_label = images.read_label(DEMO / "GlaS" / "Label" / "Case1_label.bmp")
    assert glas.dtype == np.uint8 and glas.ndim == 3 and glas.shape[2] == 3
    assert glas_label.dtype == np.uint8 and glas_label.shape == glas.shape[:2]
    assert glas_label.min() == 0 and glas_label.max() > 0
