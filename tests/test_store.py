"""The run store: the saved runs first, then the cache (a run is trained once per identity and
version, reused after, retrained when stale), else training."""
import json

import numpy as np
import pytest

import odc_mini
from odc_mini.study import store
from odc_mini.study.store import cache_path, cache_status


def cached_run(config, cache_dir, **kwargs):
    """A run of this machine (the saved runs skipped), from the cache or trained into it."""
    return store.get(config, replay=False, cache_dir=cache_dir, **kwargs)


def tiny(method="odc", **kw):
    values = dict(method=method, profile="quick", dataset="synthetic", subset=200, epochs=2,
                  batch_size=50, num_clusters=5, min_cluster=2, pca_dim=8, snapshot_size=50,
                  eval_batch_size=200, eval_interval=1, device="cpu", linear_probe=False)
    values.update(kw)
    return odc_mini.Config(**values)


def forbid_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the cache trained a run it should have loaded")
    monkeypatch.setattr(store, "train", fail)


def test_second_call_loads_instead_of_training(tmp_path, monkeypatch):
    first = cached_run(tiny(), tmp_path, progress=False)
    assert cache_status(tiny(), tmp_path) == "fresh"
    forbid_training(monkeypatch)
    second = cached_run(tiny(), tmp_path, progress=False)
    np.testing.assert_array_equal(first.history.iteration("loss"), second.history.iteration("loss"))
    np.testing.assert_array_equal(first.memory.labels.numpy(), second.memory.labels.numpy())
    for key, value in first.model.state_dict().items():
        assert np.array_equal(value.numpy(), second.model.state_dict()[key].numpy()), key


def test_where_the_data_lives_is_not_part_of_the_key(tmp_path):
    assert cache_path(tiny(data_root="/a"), tmp_path) == cache_path(tiny(data_root="/b"), tmp_path)
    assert cache_path(tiny(), tmp_path) != cache_path(tiny(momentum=0.3), tmp_path)
    assert cache_path(tiny(), tmp_path) != cache_path(tiny(method="deepcluster"), tmp_path)


def test_another_version_makes_the_run_stale_and_it_is_retrained(tmp_path, monkeypatch):
    cached_run(tiny(), tmp_path, progress=False)
    monkeypatch.setattr(store, "__version__", "999.0")
    assert cache_status(tiny(), tmp_path) == "stale"
    calls = []
    real_train = store.train
    monkeypatch.setattr(store, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    cached_run(tiny(), tmp_path, progress=False)
    assert calls == [1]
    stored = json.loads((cache_path(tiny(), tmp_path) / store.KEY_FILE).read_text())
    assert stored["version"] == "999.0" and cache_status(tiny(), tmp_path) == "fresh"


def test_a_changed_key_file_is_stale(tmp_path):
    cached_run(tiny(), tmp_path, progress=False)
    key_file = cache_path(tiny(), tmp_path) / store.KEY_FILE
    key = json.loads(key_file.read_text())
    key["identity"]["lr"] = 123.0
    key_file.write_text(json.dumps(key))
    assert cache_status(tiny(), tmp_path) == "stale"
    key_file.write_text("{not json")
    assert cache_status(tiny(), tmp_path) == "stale"


def test_an_interrupted_training_leaves_no_cached_run(tmp_path):
    def interrupt(history):
        if history.num_epochs == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        cached_run(tiny(), tmp_path, progress=False, callback=interrupt)
    assert cache_status(tiny(), tmp_path) == "missing"


def test_an_interrupted_training_resumes_on_the_next_call(tmp_path):
    def interrupt(history):
        if history.num_epochs == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        cached_run(tiny(epochs=3), tmp_path / "a", progress=False, callback=interrupt)
    seen = []
    resumed = cached_run(tiny(epochs=3), tmp_path / "a", progress=False,
                         callback=lambda h: seen.append(h.num_epochs))
    assert seen == [3]                       # epochs 1 and 2 came from the checkpoint
    clean = cached_run(tiny(epochs=3), tmp_path / "b", progress=False)
    for key in ("loss", "change_ratio"):
        np.testing.assert_array_equal(resumed.history.iteration(key), clean.history.iteration(key))
    np.testing.assert_array_equal(resumed.memory.labels.numpy(), clean.memory.labels.numpy())
    assert cache_status(tiny(epochs=3), tmp_path / "a") == "fresh"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [cache_path(tiny(epochs=3), tmp_path / "a").name]


def test_callback_sees_every_epoch_as_it_is_recorded(tmp_path):
    seen = []
    cached_run(tiny(epochs=3), tmp_path, progress=False,
               callback=lambda h: seen.append((h.num_epochs, h.last("loss"))))
    assert [n for n, _ in seen] == [0, 1, 2, 3]
    assert np.isnan(seen[0][1]) and all(np.isfinite(loss) for _, loss in seen[1:])


def test_the_saved_run_of_the_same_identity_comes_first(tmp_path, monkeypatch):
    from odc_mini.study import experiments, saved
    from odc_mini.study.experiments import Experiment
    values = tiny().identity()
    monkeypatch.setitem(experiments.EXPERIMENTS, "tiny", Experiment("tiny", values, "a test run"))
    trained = cached_run(tiny(), tmp_path / "cache", progress=False)
    saved.save(trained.history, trained.config, "tiny", tmp_path / "saved", note="here")
    monkeypatch.setattr(saved, "SAVED_DIR", tmp_path / "saved")
    forbid_training(monkeypatch)
    # the saved run, whatever the data folder or device: they are not part of the identity
    run = store.get(tiny(data_root="/elsewhere", device="auto"), cache_dir=tmp_path / "empty")
    assert run.name == "tiny" and run.model is None and run.provenance["note"] == "here"
    np.testing.assert_array_equal(run.history.iteration("loss"), trained.history.iteration("loss"))
    # replay=False: this machine's run, from its cache, with the network
    mine = store.get(tiny(), replay=False, cache_dir=tmp_path / "cache")
    assert mine.name is None and mine.model is not None
    # another identity is not the saved run: trained (here: refused, training is forbidden)
    with pytest.raises(AssertionError, match="trained a run"):
        store.get(tiny(momentum=0.3), cache_dir=tmp_path / "empty")


def test_training_time_says_cached_or_the_saved_runs_minutes(tmp_path):
    quick = odc_mini.Config(method="odc", profile="quick")
    found = odc_mini.study.saved.find(quick)            # the chapters' run: a saved one exists
    minutes = f"{found.provenance['wall_seconds'] / 60:.1f} min"
    said = store.training_time(quick, tmp_path)
    assert said.startswith("not trained on this machine yet") and minutes in said
    assert found.provenance["cpu"] in said
    assert "no saved run" in store.training_time(tiny(), tmp_path)
    cached_run(tiny(), tmp_path, progress=False)
    assert store.training_time(tiny(), tmp_path).startswith("already in this machine's run cache")
