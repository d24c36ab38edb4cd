"""searchprune.data.synthetic: deterministic, balanced and learnable."""

from __future__ import annotations

import torch

from searchprune.data import (
    BatchLoader,
    load_dataset,
    make_synthetic,
)
from searchprune.models import create_model


def test_synthetic_is_deterministic_and_balanced() -> None:
    a_train, a_test, a_info = make_synthetic(num_train=200, num_test=50, seed=3)
    b_train, b_test, b_info = make_synthetic(num_train=200, num_test=50, seed=3)
    c_train, _, _ = make_synthetic(num_train=200, num_test=50, seed=4)
    assert torch.equal(a_train.images, b_train.images) and torch.equal(a_test.labels, b_test.labels)
    assert a_info == b_info
    assert not torch.equal(a_train.images, c_train.images)
    assert torch.bincount(a_train.labels).tolist() == [20] * 10
    assert a_train.images.shape == (200, 1, 28, 28) and a_train.images.dtype == torch.uint8


def test_synthetic_rgb_shape_and_registered_default() -> None:
    train, _, info = make_synthetic(num_train=40, num_test=10, num_classes=4, in_channels=3,
                                    image_size=(32, 32))
    assert train.images.shape == (40, 3, 32, 32) and info.in_channels == 3 and len(info.std) == 3
    reg_train, reg_test, reg_info = load_dataset("synthetic")
    assert (len(reg_train), len(reg_test)) == (8000, 2000)
    assert reg_info.name == "synthetic" and reg_info.image_size == (28, 28)
    assert 0 < reg_info.mean[0] < 1 and reg_info.std[0] > 0.05


def test_synthetic_is_learnable_in_one_epoch() -> None:
    train, test, info = load_dataset("synthetic")
    model = create_model("mnist_small", in_channels=1, image_size=(28, 28), mean=info.mean, std=info.std)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for x, y in BatchLoader(train, 64, shuffle=True, max_images=1500):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        batches = BatchLoader(test, 500, max_images=1000)
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    assert correct / 1000 > 0.6  # chance is 0.1
