"""Precision per device: bf16 on GPUs with bf16 tensor cores, fp16 with a gradient scaler on
older ones (Colab's T4); on the CPU bf16 where the processor has bf16 instructions, else fp32,
and fp32 on the pinned kernel path. The choice is tested with a faked GPU and faked processor
flags; the bf16 and fp16 paths themselves (autocast, the scaled backward, the scaler in
checkpoints) run here on the CPU, whatever the processor."""
from pathlib import Path

import numpy as np
import pytest
import torch

from odc_mini import Config, train
from odc_mini.run import kernels
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
    assert resolve_precision("fp32", torch.device("cuda", 0)) == "fp32"   # as asked


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "avx512f", "avx512_bf16"}, "bf16"),      # Zen 4, Cooper Lake and later Xeons
    ({"avx2", "avx512f", "amx_bf16", "amx_tile"}, "bf16"),   # Sapphire Rapids
    ({"avx2", "avx512f"}, "fp32"),                     # AVX-512 without bf16 (Skylake-X)
    ({"avx2", "fma"}, "fp32"),
    (set(), "fp32")])                                  # no /proc/cpuinfo (macOS, Windows)
def test_auto_on_the_cpu_is_bf16_only_where_the_processor_computes_it(monkeypatch, flags,
                                                                      expected):
    monkeypatch.setattr(kernels, "cpu_flags", lambda: flags)
    monkeypatch.delenv(kernels.MARKER, raising=False)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"        # as asked
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    monkeypatch.setenv(kernels.MARKER, "1")             # the pinned path is fp32 by definition
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_auto_on_the_cpu_reads_the_processors_own_flags(monkeypatch):
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    lines = [line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")]
    flags = set(lines[0].split(":", 1)[1].split()) if lines else set()
    assert kernels.cpu_flags() == flags
    monkeypatch.delenv(kernels.MARKER, raising=False)
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")


def test_autocast_dtype_on_the_cpu(monkeypatch):
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    monkeypatch.delenv(kernels.MARKER, raising=False)
    for flags, auto in ((set(), torch.float32), ({"avx512_bf16"}, torch.bfloat16)):
        monkeypatch.setattr(kernels, "cpu_flags", lambda: flags)
        for precision, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16),
                                 ("fp32", torch.float32), ("auto", auto)):
            with autocast(torch.device("cpu"), precision):
                assert layer(x).dtype == dtype, (precision, flags)


def test_a_bad_precision_is_one_line():
    with pytest.raises(ValueError, match="unknown precision 'fp8'; accepted: auto, bf16, fp16, fp32"):
        tiny(precision="fp8").validate()


# fp16 convolutions run about 30x slower than fp32 on a CPU (and bf16 ones without bf16
# instructions): these runs are smaller still
HALF_SIZE = dict(subset=100, epochs=2)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("method", ["odc", "deepcluster"])
def test_half_precision_trains_and_resumes_bit_identically(method, precision, tmp_path):
    whole = train(tiny(method=method, precision=precision, **HALF_SIZE), progress=False)
    assert whole.history.meta["precision"] == precision
    assert np.isfinite(whole.history.iteration("loss")).all()
    # it differs from fp32 (the half-precision forward really ran)
    fp32 = train(tiny(method=method, precision="fp32", **HALF_SIZE), progress=False)
    assert fp32.history.meta["precision"] == "fp32"
    assert not np.array_equal(whole.history.iteration("loss"), fp32.history.iteration("loss"))

    def stop_after_first(history):
        if history.num_epochs == 1:
            raise KeyboardInterrupt
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny(method=method, precision=precision, **HALF_SIZE), progress=False, out=out,
              callback=stop_after_first)
    from odc_mini.run import runfolder
    state = runfolder.read_checkpoint(out / runfolder.CHECKPOINT)
    scaler = state["method"]["_extra_state"]["scaler"]
    if precision == "fp16":
        assert scaler["scale"] > 0      # the loss scale is checkpointed
    else:
        assert scaler is None           # bf16 has fp32's range: no scaler
    assert state["precision"] == precision
    # A resumed run keeps the precision it started in: asking for another one is refused before
    # any work, and "auto" (fp32 or bf16 on a CPU, never fp16) continues in the run's own.
    other = "fp32"
    with pytest.raises(ValueError, match=f"trains in {precision}; precision='{other}' would"):
        train(tiny(method=method, precision=other, **HALF_SIZE), progress=False, out=out,
              resume=True)
    resumed = train(tiny(method=method, precision="auto", **HALF_SIZE), progress=False,
                    out=out, resume=True)
    assert resumed.history.meta["precision"] == precision
    for key in ("loss", "acc", "change_ratio"):
        np.testing.assert_array_equal(resumed.history.iteration(key), whole.history.iteration(key))
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
