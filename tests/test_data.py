import gzip

import numpy as np
import pytest
import torch

from ldmcourse.data import DEBIAN_FASHION_DIR, DatasetError, dynamic_binarize, fit_size, load_dataset, read_idx


def test_mnist5k_is_shuffled_split_and_scaled():
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    assert len(train) == 4000 and len(test) == 1000
    x, y = train.tensors()
    assert x.shape == (4000, 1, 32, 32) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    # the file is sorted by class; after the seeded shuffle every class appears in both splits
    assert set(y.tolist()) == set(range(10)) and set(test.tensors()[1].tolist()) == set(range(10))
    assert (y[:100] == y[0]).float().mean() < 0.5
    # padding 28 -> 32 uses the background value -1
    assert bool((x[:, :, :2, :] == -1).all())
    # deterministic: the same split every time
    assert torch.equal(load_dataset("mnist5k", "test").labels, test.labels)


def test_native_size_and_subset():
    ds = load_dataset("mnist5k", "train", size=28, n=64, seed=3)
    assert len(ds) == 64 and ds.shape == (1, 28, 28)
    assert torch.equal(ds.labels, load_dataset("mnist5k", "train", size=28, n=64, seed=3).labels)


def test_digits_offline():
    ds = load_dataset("digits", "train", size=None)
    assert ds.shape == (1, 8, 8) and len(ds) == 1797 - 297
    assert load_dataset("digits", "test", size=32).shape == (1, 32, 32)


@pytest.mark.skipif(not DEBIAN_FASHION_DIR.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian(no_network, tmp_path):
    ds = load_dataset("fashion-mnist", "test", root=tmp_path)
    assert len(ds) == 10_000 and ds.shape == (1, 32, 32)
    assert ds.classes[9] == "Ankle boot"


def test_unknown_name_lists_choices():
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'.*mnist5k"):
        load_dataset("imagenet")


def test_offline_mnist_falls_back_with_notice(no_network, tmp_path, capsys):
    ds = load_dataset("mnist", "train", root=tmp_path)
    out = capsys.readouterr().out
    assert ds.name == "mnist5k" and len(ds) == 4000
    assert "NOTICE" in out and "mnist5k" in out and "To get the full set" in out


def test_offline_without_fallback_names_the_fix(no_network, tmp_path):
    with pytest.raises(DatasetError, match="cifar10 is not available.*Fix:"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(DatasetError, match="mnist is not available"):
        load_dataset("mnist", root=tmp_path, fallback=False)


def test_corrupt_idx_file_is_named(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big") + b"\x00" * 100)
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz is corrupt or truncated"):
        read_idx(bad)


def test_idx_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(b"\x00\x00\x08\x03" + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes())
    assert np.array_equal(read_idx(p), arr)


def test_fit_size_resizes_and_pads():
    x = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    assert fit_size(x, 32).shape == (2, 1, 32, 32) and fit_size(x, 32)[0, 0, 0, 0] == 0
    assert fit_size(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), 32).shape == (2, 3, 32, 32)


def test_dynamic_binarize_is_bernoulli():
    x = torch.full((20000,), 0.5)  # p = 0.75 after mapping [-1, 1] -> [0, 1]
    b = dynamic_binarize(x, torch.Generator().manual_seed(0))
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    assert abs(b.mean().item() - 0.75) < 0.01


def test_fashion_mnist_bundled_subset_when_nothing_else(no_network, tmp_path, monkeypatch, capsys):
    """A fresh offline machine (no torchvision copy, no Debian package) gets the bundled subset, and is told."""
    import ldmcourse.data as data

    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    train, test = load_dataset("fashion-mnist", "train", root=tmp_path), load_dataset("fashion-mnist", "test", root=tmp_path)
    out = capsys.readouterr().out
    assert "NOTICE" in out and "bundled" in out and "apt-get install dataset-fashion-mnist" in out
    assert (len(train), len(test)) == (10_000, 2_000) and train.shape == (1, 32, 32)
    assert train.name == "fashion-mnist" and "bundled subset" in train.info.source
    assert torch.bincount(train.labels).tolist() == [1000] * 10 and torch.bincount(test.labels).tolist() == [200] * 10
    assert train.classes[9] == "Ankle boot"


@pytest.mark.skipif(not DEBIAN_FASHION_DIR.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_bundled_subset_is_the_real_images_at_its_indices():
    from ldmcourse.data import BUNDLED_FASHION_DIR

    for prefix in ("train", "t10k"):
        idx = np.loadtxt(BUNDLED_FASHION_DIR / f"{prefix}-indices.txt", dtype=np.int64)
        full_x, full_y = (read_idx(DEBIAN_FASHION_DIR / f"{prefix}-{k}-idx{d}-ubyte.gz") for k, d in (("images", 3), ("labels", 1)))
        sub_x, sub_y = (read_idx(BUNDLED_FASHION_DIR / f"{prefix}-{k}-idx{d}-ubyte.gz") for k, d in (("images", 3), ("labels", 1)))
        assert np.array_equal(full_x[idx], sub_x) and np.array_equal(full_y[idx], sub_y)
