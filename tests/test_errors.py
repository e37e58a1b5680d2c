"""Every bad input gets one line naming the value and what is accepted, before any heavy work,
and leaves everything already saved as it was. The command line prints the line without a
traceback and exits non-zero."""
import hashlib
import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import odc_mini
from odc_mini import Config, TrainingDiverged, load_run, train
from odc_mini.run import runfolder
from odc_mini.study import cli
from odc_mini import train as _train_function  # noqa: F401  (the module is shadowed by it)
from odc_mini.method import Method

import importlib
build_module = importlib.import_module("odc_mini.run.start")


def tiny(method="odc", **kw):
    values = dict(method=method, profile="quick", dataset="synthetic", subset=200, epochs=2,
                  batch_size=50, lr=0.05, num_clusters=5, min_cluster=2, pca_dim=8, device="cpu")
    values.update(kw)
    return Config(**values)


# The same tiny run as command-line flags.
TINY_FLAGS = ["--dataset", "synthetic", "--subset", "200", "--epochs", "2", "--batch-size", "50",
              "--lr", "0.05", "--num-clusters", "5", "--min-cluster", "2", "--pca-dim", "8",
              "--device", "cpu"]


def small_cifar(path: Path, n_train=200, n_test=100, **replace) -> Path:
    """A valid cifar10.npz with few images (random pixels, balanced labels), or one with the
    arrays in ``replace`` swapped in."""
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
                  y_train=np.arange(n_train) % 10, x_test=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
                  y_test=np.arange(n_test) % 10, classes=np.array([f"class{i}" for i in range(10)]))
    arrays.update(replace)
    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / "cifar10.npz", **arrays)
    return path / "cifar10.npz"


def digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` by relative path, with the SHA-256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A workspace with what a user may already have: a finished run, an unfinished one
    (stopped after epoch 1), an unrelated folder and a good data file."""
    root = tmp_path_factory.mktemp("saved")
    train(tiny(), progress=False, out=root / "done")

    def stop(history):
        if history.num_epochs == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), progress=False, out=root / "unfinished", callback=stop)
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("my notes\n")
    small_cifar(root / "data")
    return root


@pytest.fixture
def unchanged(saved):
    """Asserts, after the test, that no saved file was changed, added or removed."""
    before = digest(saved)
    yield saved
    assert digest(saved) == before


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, err.strip()


# ------------------------------------------------------------------------------------ settings

SETTINGS = [
    (["--num-clusters", "1"], "num_clusters=1 must be an integer, at least 2"),
    (["--num-clusters", "300", "--min-cluster", "0"], "num_clusters=300 exceeds the 200 training images"),
    (["--min-cluster", "50"], "min_cluster x num_clusters = 50 x 5 exceeds the 200 training images; lower either"),
    (["--batch-size", "256"], "batch_size=256 exceeds the 200 training images"),
    (["--momentum", "1.5"], "momentum=1.5 is outside [0, 1]"),
    (["--momentum", "-0.1"], "momentum=-0.1 is outside [0, 1]"),
    (["--epochs", "0"], "epochs=0 must be a positive integer"),
    (["--epochs", "-3"], "epochs=-3 must be a positive integer"),
    (["--lr", "0"], "lr=0.0 must be a finite number > 0"),
    (["--lr", "-0.1"], "lr=-0.1 must be a finite number > 0"),
    (["--lr", "nan"], "lr=nan must be a finite number > 0"),
    (["--method", "kmeans"], "unknown method 'kmeans'; accepted: odc, deepcluster, coke"),
    (["--arch", "vgg"], "unknown arch 'vgg'; accepted: small_cnn, resnet18"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'; accepted: cifar10, synthetic"),
    (["--profile", "huge"], "unknown profile 'huge'; accepted: quick, medium, full"),
    (["--probe-interval", "-1"], "probe_interval=-1 must be an integer >= 0 (0: the first and "
                                 "last epoch only)"),
    (["--test-subset", "0"], "test_subset=0 must be a positive number of images or None (all)"),
    (["--device", "tpu"], "unknown device 'tpu'; accepted: auto, cpu, cuda, cuda:N"),
    (["--device", "cuda:x"], "unknown device 'cuda:x'; accepted: auto, cpu, cuda, cuda:N"),
]


@pytest.mark.parametrize("flags, message", SETTINGS, ids=[" ".join(f) for f, _ in SETTINGS])
def test_bad_setting_on_the_command_line(flags, message, unchanged, capsys):
    out = unchanged / "new"
    code, err = run_cli(capsys, "train", *TINY_FLAGS, *flags, "--out", str(out))
    assert (code, err) == (2, f"error: {message}")
    assert not out.exists()


def test_bad_setting_from_python_before_any_work(monkeypatch):
    monkeypatch.setattr(build_module, "load_dataset", lambda *a, **k: pytest.fail("data was loaded"))
    with pytest.raises(ValueError) as err:
        train(tiny(num_clusters=300, min_cluster=0), progress=False)
    assert str(err.value) == "num_clusters=300 exceeds the 200 training images"


def test_subset_larger_than_cifar10_is_refused_before_loading(unchanged, capsys, monkeypatch):
    monkeypatch.setattr(build_module, "load_dataset", lambda *a, **k: pytest.fail("data was loaded"))
    code, err = run_cli(capsys, "train", "--subset", "60000", "--out", str(unchanged / "new"))
    assert (code, err) == (2, "error: subset=60000 is larger than the CIFAR-10 train set (50000 images)")


def test_subset_larger_than_the_data_file(unchanged, capsys):
    code, err = run_cli(capsys, "train", "--dataset", "cifar10", "--data-root", str(unchanged / "data"),
                        "--subset", "300", "--num-clusters", "5", "--min-cluster", "2",
                        "--device", "cpu", "--out", str(unchanged / "new"))
    assert (code, err) == (2, "error: subset=300 is larger than the CIFAR-10 train set (200 images)")
    assert not (unchanged / "new").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(unchanged, capsys):
    code, err = run_cli(capsys, "train", *TINY_FLAGS[:-2], "--device", "cuda", "--out", str(unchanged / "new"))
    assert (code, err) == (2, "error: device 'cuda' was asked for but this machine has no CUDA GPU; "
                              "use 'cpu' or 'auto'")


def test_argument_of_the_wrong_type_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--epochs", "ten", "--out", "x"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("error: argument --epochs: invalid int value: 'ten' "
                                       "(see python -m odc_mini train --help)\n")


# ---------------------------------------------------------------------------------------- data

def cifar_flags(root: Path) -> list[str]:
    return ["--dataset", "cifar10", "--data-root", str(root), "--subset", "100",
            "--num-clusters", "5", "--min-cluster", "2", "--batch-size", "50", "--device", "cpu"]


def test_truncated_data_file(tmp_path, capsys):
    path = small_cifar(tmp_path / "data")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = digest(tmp_path)
    code, err = run_cli(capsys, "train", *cifar_flags(tmp_path / "data"), "--out", str(tmp_path / "new"))
    assert code == 2
    assert err.startswith(f"error: {path}: cannot read it as an npz file, it is probably truncated "
                          "or corrupt (")
    assert "\n" not in err and digest(tmp_path) == before


@pytest.mark.parametrize("replace, message", [
    (dict(x_train=np.zeros((200, 3, 32, 32), np.uint8)),
     "x_train must be (n, 32, 32, 3) uint8, got (200, 3, 32, 32) uint8"),
    (dict(x_train=np.zeros((200, 32, 32, 3), np.float32)),
     "x_train must be (n, 32, 32, 3) uint8, got (200, 32, 32, 3) float32"),
    (dict(y_test=np.zeros(100, np.float64)), "y_test must be (100,) int64, got (100,) float64"),
    (dict(y_train=np.arange(150) % 10), "y_train must be (200,) int64, got (150,) int64"),
    (dict(y_train=np.arange(200) % 12), "y_train has labels outside 0..9 (min 0, max 11)"),
])
def test_data_file_with_wrong_shapes_or_dtypes(replace, message, tmp_path, capsys):
    path = small_cifar(tmp_path / "data", **replace)
    before = digest(tmp_path)
    code, err = run_cli(capsys, "train", *cifar_flags(tmp_path / "data"), "--out", str(tmp_path / "new"))
    assert (code, err) == (2, f"error: {path}: {message}")
    assert digest(tmp_path) == before and not (tmp_path / "new").exists()


def test_no_data_offline(tmp_path, capsys):
    code, err = run_cli(capsys, "train", *cifar_flags(tmp_path / "empty"), "--out", str(tmp_path / "new"))
    assert code == 2
    assert err.startswith(f"error: CIFAR-10 not found: looked for {(tmp_path / 'empty' / 'cifar10.npz').resolve()}")
    assert "download=True (CLI: --download)" in err and "\n" not in err


def test_download_without_a_network(tmp_path, capsys, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    code, err = run_cli(capsys, "train", *cifar_flags(tmp_path / "data"), "--download",
                        "--out", str(tmp_path / "new"))
    assert code == 2
    assert err == (f"error: CIFAR-10 is not in {(tmp_path / 'data').resolve()} and torchvision could not "
                   "download it (URLError: <urlopen error [Errno -3] Temporary failure in name "
                   f"resolution>); offline, decode the project's copy into {tmp_path / 'data' / 'cifar10.npz'} "
                   "(see data/README.md) or set $ODC_DATA to a folder holding cifar10.npz")


# ------------------------------------------------------------------------------ output folders

def test_output_folder_holding_a_different_run(unchanged, capsys):
    code, err = run_cli(capsys, "train", *TINY_FLAGS, "--epochs", "3", "--out", str(unchanged / "done"))
    assert (code, err) == (2, f"error: output folder {unchanged / 'done'} holds a different run "
                              "(epochs (saved 2, now 3)); choose another folder")


def test_output_folder_holding_the_same_finished_run(unchanged, capsys):
    code, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(unchanged / "done"))
    assert (code, err) == (2, f"error: output folder {unchanged / 'done'} already holds the finished "
                              f"run of this config; load it with odc_mini.load_run('{unchanged / 'done'}') "
                              "or choose another folder")


def test_output_folder_holding_an_unfinished_run(unchanged, capsys):
    code, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(unchanged / "unfinished"))
    assert (code, err) == (2, f"error: output folder {unchanged / 'unfinished'} holds an unfinished run "
                              "of this config (stopped after epoch 1 of 2); continue it with "
                              "resume=True (CLI: --resume) or choose another folder")


def test_output_folder_holding_other_files(unchanged, capsys):
    code, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(unchanged / "notes"))
    assert (code, err) == (2, f"error: output folder {unchanged / 'notes'} cannot take the run: it "
                              "holds todo.txt and no odc_mini run; choose an empty or new folder")


def test_resume_with_a_different_config_names_the_difference(unchanged, capsys):
    code, err = run_cli(capsys, "train", "--out", str(unchanged / "unfinished"), "--resume",
                        "--lr", "0.1", "--seed", "3")
    assert (code, err) == (2, f"error: cannot resume {unchanged / 'unfinished'} with a different config: "
                              "lr (saved 0.05, now 0.1); seed (saved 0, now 3)")
    with pytest.raises(ValueError) as e:
        train(tiny(momentum=0.3), progress=False, out=unchanged / "unfinished", resume=True)
    assert str(e.value) == (f"cannot resume {unchanged / 'unfinished'} with a different config: "
                            "momentum (saved 0.5, now 0.3)")


def test_resume_of_another_version(unchanged, capsys, monkeypatch):
    monkeypatch.setattr(runfolder, "__version__", "9.9.9")
    code, err = run_cli(capsys, "train", "--out", str(unchanged / "unfinished"), "--resume")
    assert (code, err) == (2, f"error: cannot resume {unchanged / 'unfinished'}: its checkpoint was "
                              f"written by odc_mini {odc_mini.__version__} and this is 9.9.9; resume "
                              "with that version or start a new run")


def test_resume_with_nothing_to_resume(unchanged, capsys):
    code, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(unchanged / "new"), "--resume")
    assert (code, err) == (2, f"error: cannot resume {unchanged / 'new'}: it holds no run (no checkpoint.pt)")
    with pytest.raises(ValueError) as e:
        train(tiny(), progress=False, resume=True)
    assert str(e.value) == "resume=True needs out=<the folder of the run to continue>"
    with pytest.raises(ValueError) as e:
        train(tiny(), progress=False, out=unchanged / "new", resume="yes")
    assert str(e.value) == "resume='yes'; accepted: True, False, 'auto'"


def test_resume_of_a_finished_run_loads_it(unchanged, capsys):
    code, _ = run_cli(capsys, "train", "--out", str(unchanged / "done"), "--resume", "--no-progress")
    assert code == 0
    run = train(tiny(), progress=False, out=unchanged / "done", resume=True)
    assert run.history.num_epochs == 2


def test_corrupt_checkpoint(tmp_path, saved, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    data = (saved / "unfinished" / "checkpoint.pt").read_bytes()
    (folder / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    before = digest(tmp_path)
    code, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(folder), "--resume")
    assert code == 2 and "\n" not in err
    assert err.startswith(f"error: {folder / 'checkpoint.pt'} is not a readable checkpoint, it is "
                          "probably truncated or not written by odc_mini (")
    torch.save({"weights": torch.zeros(3)}, folder / "checkpoint.pt")
    before = digest(tmp_path)
    code, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(folder), "--resume")
    assert (code, err) == (2, f"error: {folder / 'checkpoint.pt'} is not an odc_mini checkpoint (a torch "
                              "file without the 'odc_mini checkpoint' marker)")
    assert digest(tmp_path) == before


# ---------------------------------------------------------------------------------- load_run

def copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def load_error(folder: Path) -> str:
    before = digest(folder)
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        load_run(folder)
    assert digest(folder) == before      # loading never writes
    assert "\n" not in str(err.value)
    return str(err.value)


def test_load_run_corrupt_config(saved, tmp_path):
    run = copy_run(saved / "done", tmp_path / "run")
    (run / "config.json").write_text('{"method": "odc", "epochs": ')
    assert load_error(run).startswith(f"{run / 'config.json'} is not a valid odc_mini config (Expecting value")
    (run / "config.json").write_text('{"learning_rate": 0.1}')
    assert load_error(run) == (f"{run / 'config.json'} is not a valid odc_mini config (unknown config "
                               "field(s) learning_rate)")
    (run / "config.json").write_text('[1, 2]')
    assert load_error(run) == f"{run / 'config.json'} is not a valid odc_mini config (a JSON list, not an object)"


def test_load_run_corrupt_history(saved, tmp_path):
    run = copy_run(saved / "done", tmp_path / "run")
    (run / "history.npz").write_bytes(b"PK\x03\x04 not really a zip")
    assert load_error(run).startswith(f"{run / 'history.npz'} is not a readable odc_mini history file (")


def test_load_run_history_of_another_run(saved, tmp_path):
    run = copy_run(saved / "done", tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["seed"] = 7
    (run / "config.json").write_text(json.dumps(config))
    assert load_error(run) == (f"{run / 'history.npz'} does not belong to the run of "
                               f"{run / 'config.json'} (its recorded config differs)")


def test_load_run_truncated_or_foreign_weights(saved, tmp_path):
    run = copy_run(saved / "done", tmp_path / "run")
    data = (run / "model.pt").read_bytes()
    (run / "model.pt").write_bytes(data[:100])
    assert load_error(run).startswith(f"{run / 'model.pt'} is not a readable torch state dict (")
    torch.save(torch.nn.Linear(3, 2).state_dict(), run / "model.pt")
    cfg = load_run(saved / "done").config
    expected = sorted(build_module.build_model(cfg, torch.device("cpu")).state_dict())
    assert load_error(run) == (f"{run / 'model.pt'} does not fit the network of config.json "
                               f"(arch=small_cnn, num_clusters=5): tensors {len(expected)} missing "
                               f"(first: {expected[0]}), 2 unexpected (first: bias)")
    (run / "model.pt").unlink()
    assert load_error(run) == (f"{run} is an incomplete run: model.pt is missing; it was saved with "
                               "state=False, and History.load reads its history")


def test_load_run_memory_that_does_not_fit(saved, tmp_path):
    run = copy_run(saved / "done", tmp_path / "run")
    state = torch.load(run / "memory.pt")
    torch.save({**state, "features": torch.zeros(200, 128)}, run / "memory.pt")
    assert load_error(run) == (f"{run / 'memory.pt'} does not fit the memory of the run (200 "
                               "images, feat_dim=256, num_clusters=5): tensors 1 with another shape "
                               "(first: features)")
    torch.save({**state, "labels": torch.full((200,), 9)}, run / "memory.pt")
    assert load_error(run) == f"{run / 'memory.pt'} holds labels outside 0..4"


def test_load_run_of_an_unfinished_or_missing_run(saved, tmp_path):
    assert load_error(saved / "unfinished") == (
        f"{saved / 'unfinished'} holds an unfinished run (stopped after epoch 1 of 2); continue it "
        f"with train(config, out='{saved / 'unfinished'}', resume=True) or python -m odc_mini train "
        f"--out {saved / 'unfinished'} --resume")
    (tmp_path / "empty").mkdir()
    assert load_error(tmp_path / "empty") == f"{tmp_path / 'empty'} holds no odc_mini run (no config.json)"


# ------------------------------------------------------------------------------- divergence

def poison_loss_at(monkeypatch, iteration: int) -> None:
    """Make the ``iteration``-th SGD step (counted from 1) see a NaN loss."""
    real, calls = Method.sgd_step, [0]

    def sgd_step(self, logits, target, weight=None):
        calls[0] += 1
        if calls[0] == iteration:
            logits = logits * float("nan")
        return real(self, logits, target, weight)
    monkeypatch.setattr(Method, "sgd_step", sgd_step)


@pytest.mark.parametrize("method", ["odc", "deepcluster"])
def test_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(method, tmp_path, monkeypatch):
    out = tmp_path / "run"
    kept = {}

    def remember(history):   # the checkpoint as it is after epoch 1 (and never again)
        if history.num_epochs == 1:
            kept["bytes"] = (out / "checkpoint.pt").read_bytes()
    poison_loss_at(monkeypatch, 6)           # 4 steps per epoch: epoch 2, step 2
    with pytest.raises(TrainingDiverged) as err:
        train(tiny(method), progress=False, out=out, callback=remember)
    assert str(err.value) == (
        f"training stopped at iteration 6 (epoch 2, step 2 of 4): the loss became nan; "
        f"{out / 'checkpoint.pt'} still holds the run as it was after epoch 1, before the failure; "
        "try a new run with a lower learning rate than lr=0.05 (e.g. lr=0.005) or a larger batch "
        "size than 50")
    assert (out / "checkpoint.pt").read_bytes() == kept["bytes"]
    state = runfolder.read_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for k, v in state["method"].items()
                                       if k.startswith("model.") and v.is_floating_point())
    assert not (out / "config.json").exists()


def test_nan_features_stop_the_run(tmp_path, monkeypatch):
    real = Method.forward

    def forward(self, x):
        z, logits = real(self, x)
        if self.iteration == 2:
            z = z * float("inf")
        return z, logits
    monkeypatch.setattr(Method, "forward", forward)
    with pytest.raises(TrainingDiverged) as err:
        train(tiny(), progress=False)
    assert str(err.value).startswith("training stopped at iteration 3 (epoch 1, step 3 of 4): the "
                                     "network's features became non-finite; nothing was saved (pass "
                                     "out=<folder> to keep checkpoints); try a new run")


def test_diverged_run_on_the_command_line(tmp_path, capsys, monkeypatch):
    poison_loss_at(monkeypatch, 1)
    code, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(tmp_path / "run"), "--no-progress")
    assert code == 1
    assert err.startswith("error: training stopped at iteration 1 (epoch 1, step 1 of 4): the loss "
                          "became nan; ")
    assert runfolder.read_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 0   # the initial clustering
