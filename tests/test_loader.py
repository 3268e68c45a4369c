import pytest
import torch

from cnnlab.data.augment import AUGMENTATIONS, random_translate
from cnnlab.data.base import ArraySplit
from cnnlab.data.loader import TensorLoader, channel_stats


def _split(n=50, c=1, size=12):
    g = torch.Generator().manual_seed(0)
    return ArraySplit(torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8), torch.arange(n) % 10)


@pytest.mark.parametrize("name", AUGMENTATIONS.names())
def test_augmentations_keep_shape_and_are_seeded(name):
    x = torch.rand(8, 3, 16, 16)
    a = AUGMENTATIONS.get(name)(x, torch.Generator().manual_seed(1), 2)
    b = AUGMENTATIONS.get(name)(x, torch.Generator().manual_seed(1), 2)
    assert a.shape == x.shape and torch.equal(a, b)


def test_translate_shifts_whole_images_and_fills_with_zeros():
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 4] = 1.0  # one bright pixel in the middle
    out = random_translate(x, torch.Generator().manual_seed(0), 2)
    pos = (out[:, 0] == 1).flatten(1).float().argmax(1)
    rows, cols = pos // 9, pos % 9
    assert torch.equal(out.sum((1, 2, 3)), torch.ones(64))  # nothing lost, nothing added
    assert rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 2 and cols.max() <= 6
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # shifts differ per image


def test_batches_cover_the_split_once_and_are_normalised():
    split = _split()
    mean, std = channel_stats(split.images)
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
