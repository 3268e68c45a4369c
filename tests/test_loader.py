import pytest
import torch

from cnnlab.data.augment import AUGMENTATIONS, PRESETS, AugmentParams, build_augment, parse_augment, random_translate
from cnnlab.data.base import ArraySplit
from cnnlab.data.loader import TensorLoader
from cnnlab.data.normalize import compute_stats
from cnnlab.errors import ConfigError


def _split(n=50, c=1, size=12):
    g = torch.Generator().manual_seed(0)
    return ArraySplit(torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8), torch.arange(n) % 10)


@pytest.mark.parametrize("name", AUGMENTATIONS.names() + list(PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_augmentations_keep_shape_range_and_are_seeded(name, channels):
    x = torch.randint(0, 256, (8, channels, 16, 12), dtype=torch.uint8)
    fn = build_augment(name, AugmentParams())
    a, b = fn(x, torch.Generator().manual_seed(1)), fn(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.float().min() >= 0 and a.float().max() <= 255
    if name != "none":  # a different draw per image: not every image changes the same way
        c = fn(x, torch.Generator().manual_seed(2))
        assert not torch.equal(a, c)


def test_ops_join_with_plus_and_unknown_ones_are_named():
    assert parse_augment("flip+rotate") == ["flip", "rotate"]
    with pytest.raises(ConfigError, match="unknown augmentation 'spin'.*presets"):
        parse_augment("flip+spin")


def test_rotation_by_zero_changes_nothing():
    x = torch.rand(4, 3, 10, 10) * 255
    assert torch.allclose(
        AUGMENTATIONS.get("rotate")(x, torch.Generator().manual_seed(0), AugmentParams(rotate=0.0)), x, atol=1e-3
    )


def test_resized_crop_stays_inside_the_image():
    x = torch.full((32, 3, 12, 12), 100.0)  # a crop that reached past the border would pull in zeros
    out = AUGMENTATIONS.get("resized-crop")(x, torch.Generator().manual_seed(0), AugmentParams(crop_scale=0.1))
    assert torch.allclose(out, x, atol=1e-3)


def test_flip_mirrors_some_images_and_keeps_the_rest():
    x = torch.arange(16 * 5, dtype=torch.float32).view(16, 1, 1, 5)
    out = AUGMENTATIONS.get("flip")(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(16)]
    kept = [torch.equal(out[i], x[i]) for i in range(16)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_translate_shifts_whole_images_and_fills_with_zeros():
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 4] = 1.0  # one bright pixel in the middle
    out = random_translate(x, torch.Generator().manual_seed(0), 2)
    pos = (out[:, 0] == 1).flatten(1).float().argmax(1)
    rows, cols = pos // 9, pos % 9
    assert torch.equal(out.sum((1, 2, 3)), torch.ones(64))  # nothing lost, nothing added
    assert rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 2 and cols.max() <= 6
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # shifts differ per image


def test_cutout_blanks_one_square_per_image_and_keeps_the_rest():
    x = torch.full((200, 2, 20, 20), 7, dtype=torch.uint8)
    out = AUGMENTATIONS.get("cutout")(x, torch.Generator().manual_seed(0), AugmentParams(cutout=6))
    blank = out[:, 0] == 0
    assert torch.equal(blank, out[:, 1] == 0) and torch.equal(
        out[~blank.unsqueeze(1).expand_as(out)], x[~blank.unsqueeze(1).expand_as(x)]
    )
    counts = blank.sum((1, 2))
    assert counts.max() == 36 and counts.min() > 0  # a whole 6x6 square inside; cut by an edge elsewhere
    for img in blank:  # each blank area is one rectangle: its bounding box is all blank
        r, c = img.any(1).nonzero().flatten(), img.any(0).nonzero().flatten()
        assert img[r.min() : r.max() + 1, c.min() : c.max() + 1].all() and len(r) <= 6 and len(c) <= 6
    assert len({tuple(img.nonzero()[0].tolist()) for img in blank}) > 50  # placed per image


def test_batches_cover_the_split_once_and_are_normalised():
    split = _split()
    mean, std = (t.tolist() for t in compute_stats("auto", split, 1))
    loader = TensorLoader(split, 16, mean=mean, std=std, shuffle=True, seed=3)
    batches = list(loader)
    assert len(loader) == len(batches) == 4
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == sorted(split.labels.tolist())
    x = torch.cat([b for b, _ in batches])
    assert x.dtype == torch.float32
    assert x.mean().item() == pytest.approx(0.0, abs=1e-4) and x.std().item() == pytest.approx(1.0, abs=1e-2)


def test_order_depends_only_on_seed_and_epoch():
    split = _split()
    kw = dict(mean=[0.5], std=[0.5], shuffle=True, augment="flip-translate")

    def labels(seed, epoch):
        loader = TensorLoader(split, 10, seed=seed, **kw)
        loader.set_epoch(epoch)
        return torch.cat([y for _, y in loader]).tolist()

    assert labels(0, 1) == labels(0, 1)
    assert labels(0, 1) != labels(0, 2)
    assert labels(0, 1) != labels(1, 1)


def test_drop_last_and_channels_last():
    loader = TensorLoader(_split(n=50, c=3), 16, mean=[0.5] * 3, std=[0.5] * 3, drop_last=True, channels_last=True)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)


def test_balanced_sampler_draws_every_class_about_equally():
    labels = torch.cat([torch.zeros(90, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    split = ArraySplit(torch.zeros(100, 1, 4, 4, dtype=torch.uint8), labels)
    loader = TensorLoader(split, 50, mean=[0.0], std=[1.0], shuffle=True, sampler="balanced", seed=0)
    drawn = torch.cat([y for epoch in range(5) for y in (loader.set_epoch(epoch) or [b for _, b in loader])])
    share = drawn.float().mean().item()  # the minority class's share: 0.1 in the data, ~0.5 drawn
    assert len(drawn) == 500 and 0.4 < share < 0.6


def test_inverse_frequency_weights():
    from cnnlab.data.splits import inverse_frequency_weights

    split = ArraySplit(torch.zeros(40, 1, 2, 2, dtype=torch.uint8), torch.tensor([0] * 30 + [1] * 10))
    assert inverse_frequency_weights(split, 2).tolist() == pytest.approx([40 / 60, 40 / 20])
    balanced = ArraySplit(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 2, 3]))
    assert inverse_frequency_weights(balanced, 4).tolist() == [1.0] * 4


@pytest.mark.parametrize("c", [1, 3])
def test_uint8_statistics_from_histograms_equal_the_float_sums(c):
    """The histogram path for uint8 images gives what summing float64 copies gives, constant images included."""
    from cnnlab.data.normalize import _array_batches, channel_stats_of

    for split in (_split(40, c, 9), ArraySplit(torch.full((5, c, 4, 4), 7, dtype=torch.uint8), torch.arange(5))):
        fast = compute_stats("auto", split, c)
        slow = channel_stats_of(_array_batches(split), c)
        assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-9) and a.shape == (c,) for a, b in zip(fast, slow))
