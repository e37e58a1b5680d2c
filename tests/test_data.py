"""Tests of odc_mini.data: the cifar10.npz format, subsets and the synthetic image set."""

import numpy as np
import pytest
import torch

from odc_mini.data import (DATA_ENV, ImageSet, default_root, load_cifar10, load_dataset,
                           stratified_subset, synthetic_images)

CLASSES = np.array(["airplane", "automobile", "bird", "cat", "deer",
                    "dog", "frog", "horse", "ship", "truck"], dtype="<U10")


def fake_arrays(n_train: int = 40, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Small random arrays in the cifar10.npz format (HWC uint8 images, int64 labels)."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        "y_train": np.arange(n_train, dtype=np.int64) % 10,
        "x_test": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        "y_test": np.arange(n_test, dtype=np.int64) % 10,
        "classes": CLASSES,
    }


def write_npz(folder, arrays) -> str:
    path = folder / "cifar10.npz"
    np.savez(path, **arrays)
    return path


# --- cifar10.npz -------------------------------------------------------------------------------

def test_npz_round_trip(tmp_path):
    arrays = fake_arrays()
    write_npz(tmp_path, arrays)
    train, test = load_cifar10(tmp_path)
    for split, ds in (("train", train), ("test", test)):
        assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
        assert ds.images.shape == (len(arrays[f"y_{split}"]), 3, 32, 32)
        assert ds.images.is_contiguous()
        # NCHW must be the HWC source with the channel axis moved to the front.
        np.testing.assert_array_equal(ds.images.numpy(), arrays[f"x_{split}"].transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(ds.labels.numpy(), arrays[f"y_{split}"])
        assert ds.classes == list(CLASSES) and len(ds) == len(arrays[f"y_{split}"])


def test_truncated_npz_is_a_clear_error(tmp_path):
    path = write_npz(tmp_path, fake_arrays())
    data = path.read_bytes()
    # Cut in the middle (array data lost, zip directory gone) and near the end (directory
    # damaged): both must give ValueError naming the file, on one line.
    for keep in (len(data) // 2, len(data) - 10, 100):
        path.write_bytes(data[:keep])
        with pytest.raises(ValueError) as err:
            load_cifar10(tmp_path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_not_an_npz_is_a_clear_error(tmp_path):
    (tmp_path / "cifar10.npz").write_text("hello, this is not a zip file\n")
    with pytest.raises(ValueError, match="cifar10.npz"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("key, bad", [
    ("x_train", lambda a: a.astype(np.float32)),            # wrong image dtype
    ("x_test", lambda a: a.transpose(0, 3, 1, 2).copy()),   # NCHW instead of HWC
    ("y_train", lambda a: a.astype(np.float64)),            # float labels
    ("y_test", lambda a: a[:-1]),                           # one label missing
    ("y_train", lambda a: a + 5),                           # labels up to 14
    ("classes", lambda a: a[:9]),                           # 9 class names
])
def test_malformed_npz_is_a_clear_error(tmp_path, key, bad):
    arrays = fake_arrays()
    arrays[key] = bad(arrays[key])
    path = write_npz(tmp_path, arrays)
    with pytest.raises(ValueError, match=key) as err:
        load_cifar10(tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_array_is_a_clear_error(tmp_path):
    arrays = fake_arrays()
    del arrays["y_test"]
    write_npz(tmp_path, arrays)
    with pytest.raises(ValueError, match="y_test"):
        load_cifar10(tmp_path)


def test_missing_file_offline(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10(tmp_path / "nowhere")
    msg = str(err.value)
    assert DATA_ENV in msg and "download" in msg and "nowhere" in msg and "\n" not in msg


def test_download_converts_and_caches(tmp_path, monkeypatch):
    # No network here: stand in for torchvision's CIFAR10 with a class of the same
    # interface (.data HWC uint8, .targets list of int, .classes) and check that the
    # result is converted and cached as cifar10.npz, with no temporary file left behind.
    import torchvision
    arrays = fake_arrays()
    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            split = "train" if train else "test"
            self.data, self.targets = arrays[f"x_{split}"], arrays[f"y_{split}"].tolist()
            self.classes = list(CLASSES)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    train, test = load_cifar10(tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar10.npz"]
    np.testing.assert_array_equal(train.images.numpy(), arrays["x_train"].transpose(0, 3, 1, 2))
    cached_train, cached_test = load_cifar10(tmp_path)       # second load: from the npz only
    assert len(calls) == 2
    assert torch.equal(cached_train.images, train.images) and torch.equal(cached_test.labels, test.labels)


def test_data_env_var_is_honoured(tmp_path, monkeypatch):
    write_npz(tmp_path, fake_arrays(n_train=30))
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert default_root() == tmp_path
    train, _ = load_cifar10()            # no root: found through $ODC_DATA
    assert len(train) == 30
    monkeypatch.delenv(DATA_ENV)
    assert str(default_root()) == "data"


def test_load_dataset_cifar10_subset(tmp_path):
    write_npz(tmp_path, fake_arrays(n_train=200, n_test=100))
    train, test = load_dataset("cifar10", tmp_path, subset=50, seed=3)
    assert len(train) == 50
    assert torch.bincount(train.labels, minlength=10).tolist() == [5] * 10
    assert len(test) == 100        # every test image, whatever the train subset
    with pytest.raises(ValueError, match="subset=201"):
        load_dataset("cifar10", tmp_path, subset=201)
    _, test = load_dataset("cifar10", tmp_path, subset=50, seed=3, test_subset=30)
    assert torch.bincount(test.labels, minlength=10).tolist() == [3] * 10
    _, whole = load_dataset("cifar10", tmp_path, test_subset=500)    # more than there are: all
    assert torch.equal(whole.labels, load_cifar10(tmp_path)[1].labels)


def test_load_dataset_unknown_name():
    with pytest.raises(ValueError, match="cifar10.*synthetic"):
        load_dataset("imagenet")


# --- ImageSet ----------------------------------------------------------------------------------

def test_image_set_subset_and_to():
    ds = synthetic_images(num_classes=3, per_class=4, size=8)
    sub = ds.subset(torch.tensor([5, 0, 11]))
    assert torch.equal(sub.images, ds.images[[5, 0, 11]]) and sub.labels.tolist() == [1, 0, 2]
    assert sub.classes == ds.classes and len(sub) == 3
    moved = ds.to("cpu")
    assert moved is not ds and torch.equal(moved.images, ds.images)
    with pytest.raises(ValueError):
        ImageSet(ds.images.float(), ds.labels, ds.classes)


# --- stratified_subset -------------------------------------------------------------------------

def test_stratified_subset_balanced_sorted_deterministic():
    labels = torch.arange(1000) % 10
    labels = labels[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
    idx = stratified_subset(labels, 203, seed=1)
    assert idx.dtype == torch.int64 and len(idx) == 203
    assert torch.equal(idx, torch.sort(idx).values) and len(torch.unique(idx)) == 203
    # 203 = 10 * 20 + 3: the first three classes get one more.
    assert torch.bincount(labels[idx], minlength=10).tolist() == [21, 21, 21] + [20] * 7
    assert torch.equal(idx, stratified_subset(labels, 203, seed=1))
    assert not torch.equal(idx, stratified_subset(labels, 203, seed=2))


def test_stratified_subset_small_class_gives_way():
    labels = torch.tensor([0] * 2 + [1] * 50 + [2] * 50)
    idx = stratified_subset(labels, 30, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [2, 14, 14]


@pytest.mark.parametrize("n", [0, 101])
def test_stratified_subset_bad_size(n):
    with pytest.raises(ValueError, match=f"n={n}.*100"):
        stratified_subset(torch.arange(100) % 10, n)


# --- synthetic images --------------------------------------------------------------------------

def fft_features(images: torch.Tensor) -> np.ndarray:
    """|2-D FFT| of the grayscale image, without the DC term: phase- and brightness-free."""
    gray = images.double().mean(dim=1)                              # (N, H, W)
    gray = gray - gray.mean(dim=(1, 2), keepdim=True)
    mag = torch.fft.fft2(gray).abs().flatten(1)                     # (N, H*W)
    return (mag / mag.norm(dim=1, keepdim=True)).numpy()


def test_synthetic_images_format_and_determinism():
    ds = synthetic_images(num_classes=10, per_class=7, size=32, seed=5)
    assert ds.images.shape == (70, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [c for c in range(10) for _ in range(7)]
    assert ds.classes == [f"c{i}" for i in range(10)]
    assert ds.images.float().std() > 30           # real contrast, not a flat image
    assert torch.equal(ds.images, synthetic_images(10, 7, 32, seed=5).images)
    assert not torch.equal(ds.images, synthetic_images(10, 7, 32, seed=6).images)


def test_synthetic_classes_are_separable():
    # Nearest class mean on FFT magnitudes, fit on one seed, scored on another.
    train, test = synthetic_images(per_class=50, seed=0), synthetic_images(per_class=50, seed=1)
    f_train, f_test = fft_features(train.images), fft_features(test.images)
    means = np.stack([f_train[train.labels.numpy() == c].mean(0) for c in range(10)])
    pred = np.argmin(((f_test[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == test.labels.numpy()).mean() > 0.9


def test_load_dataset_synthetic():
    train, test = load_dataset("synthetic", subset=205, seed=0)
    assert len(train) == 205 and len(test) == 41
    assert torch.bincount(train.labels, minlength=10).min() == 20
    default_train, default_test = load_dataset("synthetic")
    assert len(default_train) == 1000 and len(default_test) == 200
    assert not torch.equal(default_train.images[:200], default_test.images)


# --- the real CIFAR-10 file, if it has been prepared -------------------------------------------

def test_real_cifar10_if_present():
    path = default_root() / "cifar10.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found (decode it with decode_jpeg.py, or set {DATA_ENV})")
    train, test = load_cifar10()
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"
