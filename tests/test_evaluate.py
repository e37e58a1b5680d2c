"""Tests of odc_mini.evaluate against independent (naive or brute-force) computations."""

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from odc_mini.evaluate import (
    ari,
    centroid_drift,
    hungarian_accuracy,
    knn_accuracy,
    linear_probe,
    nmi,
)

A = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 0]
B = [1, 1, 0, 0, 2, 2, 2, 3, 3, 3, 1, 1]


def test_nmi_ari_match_sklearn_and_accept_tensors():
    assert nmi(A, B) == pytest.approx(normalized_mutual_info_score(A, B))
    assert ari(A, B) == pytest.approx(adjusted_rand_score(A, B))
    assert nmi(torch.tensor(A), torch.tensor(B)) == pytest.approx(nmi(A, B))
    assert ari(torch.tensor(A), np.array(B)) == pytest.approx(ari(A, B))
    with pytest.raises(ValueError, match="length"):
        nmi([0, 1], [0, 1, 1])


def brute_force_accuracy(pred, true) -> float:
    """Try every injective cluster -> class mapping (small cases only)."""
    pred, true = np.asarray(pred), np.asarray(true)
    clusters, classes = np.unique(pred), np.unique(true)
    best = 0
    if len(clusters) <= len(classes):
        for image in itertools.permutations(classes, len(clusters)):
            mapping = dict(zip(clusters, image))
            best = max(best, sum(mapping[p] == t for p, t in zip(pred, true)))
    else:  # each class receives a distinct cluster, the other clusters are wrong
        for image in itertools.permutations(clusters, len(classes)):
            mapping = dict(zip(image, classes))
            best = max(best, sum(mapping.get(p, None) == t for p, t in zip(pred, true)))
    return best / len(pred)


def test_hungarian_accuracy_permuted_labels_is_one():
    true = np.random.default_rng(0).integers(0, 10, 500)
    perm = np.random.default_rng(1).permutation(10) + 100  # arbitrary cluster ids
    assert hungarian_accuracy(perm[true], true) == 1.0
    assert hungarian_accuracy(torch.from_numpy(perm[true]), torch.from_numpy(true)) == 1.0


def test_hungarian_accuracy_matches_brute_force():
    assert hungarian_accuracy(A, B) == pytest.approx(brute_force_accuracy(A, B))
    rng = np.random.default_rng(2)
    for n_pred in (3, 4, 6):  # fewer, as many and more clusters than the 4 classes
        pred = rng.integers(0, n_pred, 40)
        true = rng.integers(0, 4, 40)
        assert hungarian_accuracy(pred, true) == pytest.approx(brute_force_accuracy(pred, true))


def test_centroid_drift_is_the_mean_distance_between_same_ids():
    g = torch.Generator().manual_seed(1)
    prev = torch.randn(15, 4, generator=g) * 3
    perm = torch.randperm(15, generator=g)
    cur = prev[perm]
    expected = np.mean([float(np.linalg.norm(cur[k] - prev[k])) for k in range(15)])
    assert centroid_drift(prev, cur) == pytest.approx(expected, rel=1e-6)
    assert expected > 1.0
    shifted = prev + torch.tensor([3.0, 0.0, 0.0, 4.0])  # every centroid moves by 5
    assert centroid_drift(prev, shifted) == pytest.approx(5.0, rel=1e-6)


def naive_knn(train, train_y, test, test_y, k, t, num_classes):
    correct = 0
    for q, y in zip(test, test_y):
        sims = [float(np.dot(q, r) / (np.linalg.norm(q) * np.linalg.norm(r))) for r in train]
        order = sorted(range(len(train)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * num_classes
        for i in order:
            votes[train_y[i]] += math.exp(sims[i] / t)
        correct += int(np.argmax(votes) == y)
    return correct / len(test)


@pytest.mark.parametrize("k,t", [(5, 0.07), (5, 1.0), (1, 0.5), (500, 0.1)])
def test_knn_accuracy_matches_naive_loop(k, t):
    rng = np.random.default_rng(3)
    train = rng.normal(size=(60, 6))
    test = rng.normal(size=(25, 6))
    train_y = rng.integers(0, 3, 60)
    test_y = rng.integers(0, 3, 25)
    ours = knn_accuracy(
        torch.from_numpy(train).float(), torch.from_numpy(train_y),
        torch.from_numpy(test).float(), torch.from_numpy(test_y),
        k=k, temperature=t, chunk=7,  # chunk < M exercises the chunk loop
    )
    # k=500 > N=60: clipped to 60
    assert ours == pytest.approx(naive_knn(train, train_y, test, test_y, min(k, 60), t, 3))


def test_linear_probe_separable_blobs():
    x, y = make_blobs(n_samples=2000, n_features=32, centers=5, cluster_std=2.0, random_state=0)
    x = torch.from_numpy(x).float()
    y = torch.from_numpy(y)
    acc = linear_probe(x[:1500], y[:1500], x[1500:], y[1500:], epochs=20)
    assert acc > 0.95
    again = linear_probe(x[:1500], y[:1500], x[1500:], y[1500:], epochs=20)
    assert acc == again  # deterministic for a fixed seed


@pytest.mark.parametrize("probe", [linear_probe, knn_accuracy])
def test_probes_refuse_an_empty_split_by_name(probe):
    x, y = torch.randn(8, 4), torch.arange(8) % 2
    with pytest.raises(ValueError, match=r"test_feats has no rows \(shape \(0, 4\)\)"):
        probe(x, y, x[8:], y[8:])
    with pytest.raises(ValueError, match=r"train_feats has no rows"):
        probe(x[:0], y[:0], x, y)


def test_embed_images_batches_in_order_and_restores_mode():
    from odc_mini.augment import normalize
    from odc_mini.method import embed_images
    from odc_mini.models import ClusterNet

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (37, 3, 32, 32), generator=g, dtype=torch.uint8)
    model = ClusterNet("small_cnn", 5)
    model.train()
    emb = embed_images(model, images, batch_size=10)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        want_h, want_z = model.embed(normalize(images))  # one batch, computed directly
    assert emb.backbone.shape == (37, 256) and emb.neck.shape == (37, 256)
    torch.testing.assert_close(emb.backbone, want_h, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(emb.neck, want_z, atol=1e-4, rtol=1e-4)
