"""ODCMemory against naive re-computations written here, and the spec's invariants."""
import numpy as np
import pytest
import torch

from odc_mini import ODCMemory


def unit(x):
    return x / x.norm(dim=1, keepdim=True)


def blobs(n_per=50, k=4, d=8, seed=0, spread=0.05):
    g = torch.Generator().manual_seed(seed)
    centers = unit(torch.randn(k, d, generator=g))
    labels = torch.arange(k).repeat_interleave(n_per)
    feats = centers[labels] + spread * torch.randn(k * n_per, d, generator=g)
    return feats, labels


def make_memory(feats, labels, k, **kw):
    mem = ODCMemory(feats.shape[0], feats.shape[1], k, **kw)
    mem.init_memory(feats, labels)
    return mem


def test_init_normalises_features_and_centroids_are_member_means():
    feats, labels = blobs()
    mem = make_memory(feats * 3.0, labels, 4, min_cluster=5)
    assert torch.allclose(mem.features.norm(dim=1), torch.ones(len(feats)), atol=1e-6)
    for k in range(4):
        expected = unit(feats[labels == k]).mean(dim=0)
        assert torch.allclose(mem.centroids[k], expected, atol=1e-6)
    # raw means of unit vectors are shorter than 1: the reference does not re-normalise them
    assert (mem.centroids.norm(dim=1) < 1).all()


def naive_update(features, labels, centroids, idx, feats, m):
    """The reference update written as a loop, one sample at a time (last write wins)."""
    features, labels = features.clone(), labels.clone()
    old_labels = labels.clone()
    changed = 0
    for i, f in zip(idx.tolist(), feats):
        u = f / (f.norm() + 1e-10)
        v = (1 - m) * features[i] + m * u
        v = v / (v.norm() + 1e-10)
        best = max(range(len(centroids)), key=lambda k: float(v @ centroids[k]))
        changed += int(best != old_labels[i])
        features[i] = v
        labels[i] = best
    return features, labels, changed / len(idx)


@pytest.mark.parametrize("momentum", [0.1, 0.5, 0.9])
def test_update_samples_matches_naive_loop(momentum):
    feats, labels = blobs(seed=1)
    mem = make_memory(feats, labels, 4, momentum=momentum, min_cluster=5)
    g = torch.Generator().manual_seed(2)
    idx = torch.randperm(len(feats), generator=g)[:32]
    new = torch.randn(32, feats.shape[1], generator=g).abs()
    want_f, want_l, want_ratio = naive_update(mem.features, mem.labels, mem.centroids, idx, new, momentum)
    ratio = mem.update_samples(idx, new)
    assert torch.allclose(mem.features, want_f, atol=1e-6)
    assert torch.equal(mem.labels, want_l)
    assert isinstance(ratio, torch.Tensor) and ratio.ndim == 0     # no host sync: a 0-d tensor
    assert ratio.item() == pytest.approx(want_ratio)
    assert torch.allclose(mem.features.norm(dim=1), torch.ones(len(feats)), atol=1e-6)


def test_duplicate_indices_last_write_wins():
    feats, labels = blobs(seed=3)
    mem = make_memory(feats, labels, 4, momentum=1.0, min_cluster=5)
    idx = torch.tensor([7, 7, 7])
    new = torch.eye(feats.shape[1])[:3]
    mem.update_samples(idx, new)
    assert torch.allclose(mem.features[7], new[2])


def test_momentum_extremes():
    feats, labels = blobs(seed=4)
    new = torch.rand(20, feats.shape[1])
    idx = torch.arange(20)
    mem = make_memory(feats, labels, 4, momentum=1.0, min_cluster=5)
    mem.update_samples(idx, new)
    assert torch.allclose(mem.features[:20], unit(new), atol=1e-6)   # m = 1: the new feature
    mem = make_memory(feats, labels, 4, momentum=0.0, min_cluster=5)
    before = mem.features.clone()
    mem.update_samples(idx, new)
    assert torch.allclose(mem.features, before)                       # m = 0: unchanged


def test_change_ratio_zero_when_nothing_moves_and_in_unit_interval():
    feats, labels = blobs(seed=5, spread=0.01)
    mem = make_memory(feats, labels, 4, momentum=0.5, min_cluster=5)
    idx = torch.arange(0, 200, 3)
    # feeding back the stored features with fixed centroids keeps every (well separated) label
    assert mem.update_samples(idx, mem.features[idx].clone()).item() == 0.0
    ratio = mem.update_samples(idx, torch.rand(len(idx), feats.shape[1])).item()
    assert 0.0 <= ratio <= 1.0


def test_full_centroid_recompute_equals_member_means_and_keeps_empty():
    feats, labels = blobs(seed=6)
    mem = make_memory(feats, labels, 5, min_cluster=0)   # cluster 4 is empty from the start
    mem.centroids[4] = 7.0
    before = mem.centroids.clone()
    mem.features[::2] = unit(torch.rand(100, feats.shape[1]))   # features move, labels stay
    # written from outside: the running sums do not know yet, so publishing changes nothing ...
    mem.update_centroids()
    assert torch.allclose(mem.centroids, before, atol=1e-6)
    # ... until a recount
    mem.recount()
    mem.update_centroids()
    for k in range(4):
        members = mem.features[mem.labels == k]
        if len(members):
            assert torch.allclose(mem.centroids[k], members.mean(dim=0), atol=1e-6)
    assert torch.all(mem.centroids[4] == 7.0)


def test_deal_with_small_clusters_disbands_then_splits_largest():
    # cluster 0: 120 samples in two tight sub-groups; cluster 1: 60; cluster 2: 3 (small)
    g = torch.Generator().manual_seed(7)
    d = 6
    a, b, c, e = unit(torch.randn(4, d, generator=g))
    feats = torch.cat([a + 0.01 * torch.randn(60, d, generator=g), b + 0.01 * torch.randn(60, d, generator=g),
                       c + 0.01 * torch.randn(60, d, generator=g), e + 0.01 * torch.randn(3, d, generator=g)])
    labels = torch.tensor([0] * 120 + [1] * 60 + [2] * 3)
    mem = make_memory(feats, labels, 3, min_cluster=10)
    handled = mem.deal_with_small_clusters()
    assert handled == 1
    sizes = mem.cluster_sizes()
    assert sizes.min() >= 10 and sizes.sum() == 183 and len(sizes) == 3
    # the largest cluster (0) was split along its two sub-groups: one of them became cluster 2
    assert set(mem.labels[:60].tolist()) == {mem.labels[0].item()}
    assert set(mem.labels[60:120].tolist()) == {mem.labels[60].item()}
    assert mem.labels[0] != mem.labels[60] and 2 in (mem.labels[0].item(), mem.labels[60].item())
    # the 3 disbanded samples went to the nearest non-small centroid (computed naively)
    before = make_memory(feats, labels, 3, min_cluster=10)
    for i in range(180, 183):
        want = max((0, 1), key=lambda k: float(before.features[i] @ before.centroids[k]))
        assert mem.labels[i].item() in (want, 2)  # 2 only if its new cluster was then split
    # centroids of the split and refilled clusters are member means again
    for k in range(3):
        assert torch.allclose(mem.centroids[k], mem.features[mem.labels == k].mean(0), atol=1e-5)


def test_deal_with_small_clusters_fills_empty_clusters():
    feats, labels = blobs(n_per=40, k=4, seed=8)
    mem = make_memory(feats, labels, 6, min_cluster=5)   # clusters 4 and 5 are empty
    assert mem.deal_with_small_clusters() == 2
    sizes = mem.cluster_sizes()
    assert (sizes > 0).all() and sizes.sum() == 160


def test_deal_with_small_clusters_noop_when_all_large():
    feats, labels = blobs(seed=9)
    mem = make_memory(feats, labels, 4, min_cluster=10)
    before = mem.labels.clone()
    assert mem.deal_with_small_clusters() == 0
    assert torch.equal(before, mem.labels)


def test_class_weights_inverse_sqrt_and_normalised():
    labels = torch.tensor([0] * 100 + [1] * 25 + [2] * 4)
    feats = torch.rand(len(labels), 3)
    mem = make_memory(feats, labels, 3, min_cluster=0)
    w = mem.class_weights(0.5)
    assert float(w.sum()) == pytest.approx(1.0)
    sizes = np.array([100, 25, 4], dtype=np.float64)
    expected = (sizes + 1e-5) ** -0.5
    np.testing.assert_allclose(w.numpy(), expected / expected.sum(), rtol=1e-5)
    assert torch.allclose(mem.class_weights(0.0), torch.full((3,), 1 / 3))


def test_bad_momentum_is_refused():
    with pytest.raises(ValueError, match="momentum=1.5"):
        ODCMemory(10, 3, 2, momentum=1.5)


def test_running_sums_and_counts_track_the_memory():
    """After many batches (with repeated indices), the running statistics equal a recount."""
    feats, labels = blobs(n_per=60, k=5, d=8, seed=10, spread=0.3)
    mem = make_memory(feats, labels, 5, momentum=0.7, min_cluster=0)
    g = torch.Generator().manual_seed(11)
    for _ in range(200):
        idx = torch.randint(len(feats), (48,), generator=g)      # with replacement: duplicates
        mem.update_samples(idx, torch.randn(48, 8, generator=g))
    direct_sums = torch.zeros(5, 8, dtype=torch.float64).index_add_(0, mem.labels, mem.features.double())
    assert torch.equal(mem.counts, torch.bincount(mem.labels, minlength=5))
    assert torch.allclose(mem.sums, direct_sums, atol=1e-10)
    # the published centroids are the member means, computed here independently
    mem.update_centroids()
    for k in range(5):
        members = mem.features[mem.labels == k]
        if len(members):
            assert torch.allclose(mem.centroids[k], members.mean(dim=0), atol=1e-6)


def test_last_positions_match_a_loop():
    idx = torch.tensor([4, 1, 4, 9, 1, 4, 2])
    want = [max(j for j in range(len(idx)) if idx[j] == idx[i]) for i in range(len(idx))]
    assert ODCMemory._last_positions(idx).tolist() == want


def test_step_publishes_centroids_every_interval():
    feats, labels = blobs(seed=12, spread=0.3)
    mem = make_memory(feats, labels, 4, momentum=0.5, min_cluster=0, centroid_interval=3)
    g = torch.Generator().manual_seed(13)
    before = mem.centroids.clone()
    for it in range(1, 7):
        mem.step(torch.randperm(len(feats), generator=g)[:40], torch.randn(40, 8, generator=g), it)
        if it % 3:
            assert torch.equal(mem.centroids, before), f"centroids moved at iteration {it}"
        else:
            for k in range(4):
                assert torch.allclose(mem.centroids[k], mem.features[mem.labels == k].mean(0), atol=1e-6)
            before = mem.centroids.clone()


def test_step_repairs_a_small_cluster_one_interval_later():
    """The small-cluster check is read one deal interval after it is made (no host sync)."""
    feats, labels = blobs(n_per=50, k=4, seed=14, spread=0.02)
    mem = make_memory(feats, labels, 4, momentum=1.0, min_cluster=20)
    mem.check_small_clusters()                        # as ODC.setup does
    # move 40 members of cluster 3 next to cluster 0: cluster 3 falls to 10 < 20 members
    movers = torch.arange(150, 190)
    _, handled = mem.step(movers, mem.centroids[0].expand(40, -1).clone(), 1)
    assert handled == 0 and int(mem.counts[3]) == 10             # seen, not yet repaired
    before = mem.labels.clone()
    largest = int(mem.cluster_sizes().argmax())                  # cluster 0, with 90 members
    _, handled = mem.step(torch.tensor([0]), mem.features[:1].clone(), 2)
    assert handled == 1
    # cluster 3 was disbanded and refilled with a part of the largest cluster
    refill = mem.labels == 3
    assert 0 < int(refill.sum()) < 90 and bool((before[refill] == largest).all())
    assert int(mem.cluster_sizes().sum()) == 200
    assert torch.equal(mem.counts, mem.cluster_sizes())


BUFFERS = ("features", "labels", "centroids", "sums", "counts", "small_pending")


@pytest.mark.parametrize("min_cluster", [0, 20])
def test_state_dict_round_trip_keeps_running_statistics(min_cluster):
    """The state dict is the buffers; a fresh memory loaded from it continues identically. With
    min_cluster=20 the first step leaves a small cluster pending, which the next step repairs."""
    feats, labels = blobs(seed=15, spread=0.3)
    mem = make_memory(feats, labels, 4, momentum=1.0, min_cluster=min_cluster)
    g = torch.Generator().manual_seed(16)
    # 40 members of cluster 3 move next to centroid 0 (cluster 3 falls to 10 members), 10
    # other samples get random features
    idx = torch.cat([torch.arange(150, 190), torch.arange(0, 100, 10)])
    new = torch.cat([mem.centroids[0].expand(40, -1), torch.randn(10, 8, generator=g)])
    mem.step(idx, new, 1)
    assert set(mem.state_dict()) == set(BUFFERS)
    assert bool(mem.small_pending) == (min_cluster > 0)
    copy = ODCMemory(len(feats), 8, 4, momentum=1.0, min_cluster=min_cluster)
    copy.load_state_dict(mem.state_dict())
    for name in BUFFERS:
        assert torch.equal(getattr(copy, name), getattr(mem, name)), name
    # one more step with the same batch on both: identical buffers (and the same repair)
    idx2, new2 = torch.randint(len(feats), (32,), generator=g), torch.randn(32, 8, generator=g)
    _, handled = mem.step(idx2, new2, 2)
    _, handled_copy = copy.step(idx2, new2, 2)
    assert handled == handled_copy == (1 if min_cluster else 0)
    for name in BUFFERS:
        assert torch.equal(getattr(copy, name), getattr(mem, name)), name
