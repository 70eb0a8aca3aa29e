"""ldseg_rt.data.phantoms: seeded phantoms whose labels a model can learn from the image."""
import numpy as np
import pytest
from scipy import ndimage

from ldseg_rt.data.phantoms import NUM_CLASSES, PhantomDataset, make_phantom

SIZES = [64, (96, 160), (160, 96), 128]
SEEDS = range(50)


@pytest.fixture(scope="module")
def phantoms():
    return [(size, seed, *make_phantom(size, seed)) for size in SIZES for seed in SEEDS]


def ring(mask, width):
    """The pixels within `width` of the mask, leaving a 1-pixel gap for the partial-volume edge."""
    return ndimage.binary_dilation(mask, iterations=width + 1) & ~ndimage.binary_dilation(mask)


@pytest.mark.parametrize("size,channels", [(64, 1), ((96, 160), 1), ((96, 160), 3), (128, 3)])
def test_same_seed_same_arrays(size, channels):
    first, again = make_phantom(size, 7, channels), make_phantom(size, 7, channels)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])


def test_different_seeds_differ():
    images = [make_phantom(64, seed)[0] for seed in (0, 1, 1_000_000)]
    labels = [make_phantom(64, seed)[1] for seed in (0, 1, 1_000_000)]
    for i in range(3):
        for j in range(i):
            assert not np.array_equal(images[i], images[j]) and not np.array_equal(labels[i], labels[j])


@pytest.mark.parametrize("size,channels,image_shape", [
    (64, 1, (64, 64)), ((96, 160), 1, (96, 160)), ((160, 96), 1, (160, 96)), (16, 1, (16, 16)),
    (64, 3, (64, 64, 3)), ((96, 160), 3, (96, 160, 3)), ((17, 40), 2, (17, 40, 2))])
def test_shapes_and_dtypes(size, channels, image_shape):
    image, label = make_phantom(size, 3, channels)
    assert image.dtype == np.float32 and image.shape == image_shape
    assert label.dtype == np.uint8 and label.shape == image_shape[:2]
    assert set(np.unique(label)) <= set(range(NUM_CLASSES))


def test_every_class_present_on_at_least_1_percent(phantoms):
    for size, seed, image, label in phantoms:
        assert set(np.unique(label)) == {0, 1, 2}, (size, seed)
        assert min(np.mean(label == 1), np.mean(label == 2)) >= 0.01, (size, seed)


def test_class_2_nested_in_or_touching_class_1(phantoms):
    for size, seed, image, label in phantoms:
        near = ndimage.binary_dilation(label == 2, iterations=2)
        assert (near & (label == 1)).any(), (size, seed)


def test_structures_stay_in_the_frame(phantoms):
    for size, seed, image, label in phantoms:
        border = np.concatenate([label[0], label[-1], label[:, 0], label[:, -1]])
        assert not border.any(), (size, seed)


def test_classes_differ_in_intensity(phantoms):
    organ_vs_surround, structure_vs_organ = [], []
    for size, seed, image, label in phantoms:
        organ = ndimage.binary_erosion(label == 1)
        structure = ndimage.binary_erosion(label == 2)
        organ_vs_surround.append(abs(image[organ].mean() - image[ring(label > 0, 3)].mean()))
        structure_vs_organ.append(abs(image[structure].mean() - image[organ].mean()))
    # Contrast varies and is sometimes low, but never gone, and large on average.
    assert min(organ_vs_surround) > 0.02 and np.mean(organ_vs_surround) > 0.15
    assert min(structure_vs_organ) > 0.02 and np.mean(structure_vs_organ) > 0.15


def test_images_are_finite_and_roughly_in_0_1(phantoms):
    for size, seed, image, label in phantoms:
        assert np.isfinite(image).all(), (size, seed)
        assert -0.5 < image.min() and image.max() < 1.5, (size, seed)
        assert -0.15 < np.percentile(image, 1) and np.percentile(image, 99) < 1.15, (size, seed)


def test_colour_tells_classes_apart_beyond_brightness():
    spreads = []
    for seed in range(20):
        image, label = make_phantom(64, seed, channels=3)
        surround = image[ring(label > 0, 3)].mean(0)
        for cls in (1, 2):
            # A grey copy in three channels would differ from its surround equally in each.
            spreads.append(np.ptp(image[label == cls].mean(0) - surround))
    assert np.mean(spreads) > 0.05


@pytest.mark.parametrize("kwargs,match", [
    (dict(size=15, seed=0), "at least 16"), (dict(size=(16, 15), seed=0), "at least 16"),
    (dict(size=(15, 64), seed=0), "at least 16"), (dict(size=(64, 64, 3), seed=0), r"\(H, W\)"),
    (dict(size=64, seed=0, channels=0), "channels"), (dict(size=64, seed=-1), "seed")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_phantom(**kwargs)


def test_dataset_checks_size_and_channels_up_front():
    with pytest.raises(ValueError, match="at least 16"):
        PhantomDataset((15, 64), range(10))
    with pytest.raises(ValueError, match="channels"):
        PhantomDataset(64, range(10), channels=0)


def test_dataset_items_are_the_seeds_phantoms():
    held_out = PhantomDataset((96, 160), range(1_000_000, 1_000_004), channels=3)
    assert len(held_out) == 4
    for i, seed in [(0, 1_000_000), (2, 1_000_002), (-1, 1_000_003)]:
        image, label = held_out[i]
        want_image, want_label = make_phantom((96, 160), seed, 3)
        assert np.array_equal(image, want_image) and np.array_equal(label, want_label)
    listed = PhantomDataset(64, [5, 9])
    assert len(listed) == 2 and np.array_equal(listed[1][0], make_phantom(64, 9)[0])
