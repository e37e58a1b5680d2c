"""Precision per device: bf16 on GPUs with bf16 tensor cores, fp16 with a gradient scaler on
older ones (Colab's T4), fp32 on the CPU. The choice is tested with a faked GPU; the fp16 path
itself (autocast, scaled backward, the scaler in checkpoints) runs here on the CPU."""
import numpy as np
import pytest
import torch

from odc_mini import Config, train
from odc_mini.run.precision import autocast, resolve_precision


def tiny(**kw):
    values = dict(method="odc", profile="quick", dataset="synthetic", subset=200, epochs=3,
                  batch_size=50, num_clusters=5, min_cluster=2, pca_dim=8, snapshot_size=50,
                  eval_batch_size=200, eval_interval=1, device="cpu", linear_probe=False)
    values.update(kw)
    return Config(**values)


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp16"), ((8, 0), "bf16"),
                                                  ((9, 0), "bf16")])
def test_auto_picks_by_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_precision("auto", torch.device("cuda", 0)) == expected
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("fp32", torch.device("cuda", 0)) == "fp32"   # as asked


def test_autocast_dtype_on_the_cpu():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    for precision, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16),
                             ("fp32", torch.float32), ("auto", torch.float32)):
        with autocast(torch.device("cpu"), precision):
            assert layer(x).dtype == dtype, precision


def test_a_bad_precision_is_one_line():
    with pytest.raises(ValueError, match="unknown precision 'fp8'; accepted: auto, bf16, fp16, fp32"):
        tiny(precision="fp8").validate()


# fp16 convolutions run about 30x slower than fp32 on a CPU: the fp16 runs are smaller still
FP16_SIZE = dict(subset=100, epochs=2)


@pytest.mark.parametrize("method", ["odc", "deepcluster"])
def test_fp16_with_a_gradient_scaler_trains_and_resumes_bit_identically(method, tmp_path):
    whole = train(tiny(method=method, precision="fp16", **FP16_SIZE), progress=False)
    assert whole.history.meta["precision"] == "fp16"
    assert np.isfinite(whole.history.iteration("loss")).all()
    # fp16 differs from fp32 (the scaled, half-precision forward really ran)
    fp32 = train(tiny(method=method, **FP16_SIZE), progress=False)
    assert fp32.history.meta["precision"] == "fp32"
    assert not np.array_equal(whole.history.iteration("loss"), fp32.history.iteration("loss"))

    def stop_after_first(history):
        if history.num_epochs == 1:
            raise KeyboardInterrupt
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny(method=method, precision="fp16", **FP16_SIZE), progress=False, out=out,
              callback=stop_after_first)
    from odc_mini.run import runfolder
    state = runfolder.read_checkpoint(out / runfolder.CHECKPOINT)
    assert state["method"]["_extra_state"]["scaler"]["scale"] > 0    # the loss scale is checkpointed
    resumed = train(tiny(method=method, precision="fp16", **FP16_SIZE), progress=False, out=out,
                    resume=True)
    for key in ("loss", "acc", "change_ratio"):
        np.testing.assert_array_equal(resumed.history.iteration(key), whole.history.iteration(key))
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
