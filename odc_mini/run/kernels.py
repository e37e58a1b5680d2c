"""Which CPU kernels a run's arithmetic goes through, and how to pin them to one path.

On the CPU a run is deterministic **per kernel path**, not per machine. torch picks its vector
kernels when it loads (AVX-512, AVX2 or generic ones, by what the processor has); oneDNN
(convolutions) and MKL (matrix products, vector maths) choose their own instruction sets and
block sizes, by processor model, cache sizes and vendor. Two paths round differently in the last
bit, and a few epochs of training grow that bit into points of accuracy. So:

* **same kernel path** (same processor kind, torch build and thread count): a run is bit for bit
  the same every time, and a resumed run ends where the run left alone ends;
* **another path** (another processor, another torch build): a run is another draw of the same
  process; judge it against the spread of runs with other seeds (:mod:`odc_mini.study.seeds`).

:data:`PINNED_ENV` names one path for every x86-64 processor with AVX2 and FMA, Intel or AMD,
with or without AVX-512: torch's AVX2 kernels, MKL's ``COMPATIBLE`` code branch in its
reproducible mode (fixed cache sizes, static scheduling, no approximate-reciprocal
instructions), oneDNN off (its block sizes follow the cache sizes; torch's own convolution then
runs on MKL), FAISS's AVX2 kernels with its OpenBLAS on its Haswell (AVX2) code, and exactly
two threads. The variables act only when set before torch loads, so a
pinned run is a new process: :func:`pinned_command`, or ``--pinned-kernels`` on the command
line. It is about three times slower than the machine's own path.

Whether two machines really share the pinned path is measured, not assumed: :func:`fingerprint`
hashes a fixed set of operations of the kinds a run is made of (convolutions, matrix products,
batch norm, the loss and SGD, vector maths, reductions, an eigendecomposition, FAISS's k-means)
on fixed inputs. It calls torch and FAISS only, never odc_mini's code, so a changed fingerprint
means other kernels, never other code. The golden runs (``tests/test_golden.py``) record theirs.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sys

import torch

# Set in a new process's environment, before torch loads (they are read once, when the
# libraries load).
PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",      # torch's AVX2 kernels, also on AVX-512 processors
    "MKL_CBWR": "COMPATIBLE",           # MKL: one code branch on Intel and AMD, fixed caches
    "MKL_DYNAMIC": "FALSE",             # ... and exactly the threads asked for
    "OMP_DYNAMIC": "FALSE",
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
    "OPENBLAS_NUM_THREADS": "1",        # numpy/scipy's BLAS, should any step reach it
    "FAISS_SIMD_LEVEL": "AVX2",         # FAISS (k-means on the CPU): its AVX2 kernels ...
    "OPENBLAS_CORETYPE": "Haswell",     # ... and its OpenBLAS's AVX2 ones, on every processor
}
# Variables that would steer the libraries elsewhere; removed from a pinned process.
_CLEARED = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
            "MKL_DEBUG_CPU_TYPE", "FAISS_OPT_LEVEL", "KMP_AFFINITY", "OMP_PROC_BIND")
MARKER = "ODC_MINI_PINNED_KERNELS"      # set in a pinned process (and its children)


def _cpuinfo(key: str) -> str | None:
    """The value of the first line of ``/proc/cpuinfo`` that starts with ``key`` (Linux), else
    None."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def cpu_flags() -> frozenset[str]:
    """The processor's feature flags (Linux; empty elsewhere)."""
    return frozenset((_cpuinfo("flags") or "").split())


def pinnable() -> tuple[bool, str]:
    """Whether this machine can take the pinned path, and if not, why (one line)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False, (f"the pinned kernel path is defined for x86-64 processors; this one is "
                       f"{platform.machine() or 'unknown'}")
    if not torch.backends.mkl.is_available():
        return False, "this torch build has no MKL, whose reproducible mode the pinned path uses"
    flags = cpu_flags()
    has_avx2 = {"avx2", "fma"} <= flags if flags else \
        torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    if not has_avx2:
        return False, "this processor lacks AVX2 and FMA, which the pinned path's kernels use"
    return True, ""


def is_pinned() -> bool:
    """Whether this process was started on the pinned path (:func:`pinned_env`)."""
    return os.environ.get(MARKER) == "1"


def pinned_env(base: dict | None = None) -> dict:
    """``base`` (default: this process's environment) with the pinned path's variables."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _CLEARED}
    return {**env, **PINNED_ENV, MARKER: "1"}


def pinned_command(args: list[str]) -> tuple[list[str], dict]:
    """The command and environment that run ``python -m odc_mini <args>`` on the pinned path."""
    return [sys.executable, "-m", "odc_mini", *args], pinned_env()


def apply_in_process() -> None:
    """In a process started with :func:`pinned_env`: the settings that are not environment
    variables (oneDNN off, the thread count). Refuses, in one line, when torch loaded before the
    variables were set, since its kernels would not be the pinned ones."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != PINNED_ENV["ATEN_CPU_CAPABILITY"].upper():
        raise RuntimeError(f"torch loaded with {capability} kernels; the pinned path needs "
                           f"ATEN_CPU_CAPABILITY={PINNED_ENV['ATEN_CPU_CAPABILITY']} set before "
                           "torch is imported (start the process with odc_mini.run.kernels.pinned_env())")
    torch.backends.mkldnn.enabled = False
    torch.set_num_threads(int(PINNED_ENV["OMP_NUM_THREADS"]))


def describe() -> str:
    """The kernel path of this process, e.g. ``"AVX512 kernels, oneDNN on, MKL auto, 2 threads"``
    or ``"pinned: AVX2 kernels, oneDNN off, MKL COMPATIBLE, 2 threads"``."""
    capability = torch.backends.cpu.get_cpu_capability()
    kernels = "generic kernels" if capability == "DEFAULT" else f"{capability} kernels"
    dnnl = "on" if torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled else "off"
    mkl = f"MKL {os.environ.get('MKL_CBWR', 'auto')}" if torch.backends.mkl.is_available() \
        else "no MKL"
    text = f"{kernels}, oneDNN {dnnl}, {mkl}, {torch.get_num_threads()} threads"
    return ("pinned: " + text) if is_pinned() else text


def fingerprint() -> str:
    """A short hash of what this process's kernels compute for a fixed set of operations, of the
    kinds a run uses, on fixed inputs (float32 and float64): equal on two machines when their
    kernel paths agree for all of them. Leaves the global random state as it was."""
    import torch
    import torch.nn.functional as F

    digest = hashlib.sha256()

    def add(*tensors: torch.Tensor) -> None:
        for t in tensors:
            digest.update(t.detach().contiguous().cpu().numpy().tobytes())

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        # a small CNN's training step: convolutions (channels-last), batch norm, pooling, the
        # linear head, the loss, backward and two SGD steps with momentum and weight decay
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2), torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.BatchNorm2d(32), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(), torch.nn.Linear(32, 10)).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-5)
        x = torch.rand(32, 3, 16, 16).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (32,))
        for _ in range(2):
            loss = F.cross_entropy(net(x), y, weight=torch.rand(10))
            opt.zero_grad()
            loss.backward()
            opt.step()
        add(loss, *net.parameters())
        # matrix products, plain and transposed, both precisions
        a, b = torch.randn(300, 202), torch.randn(202, 130)
        add(a @ b, a @ b.T.contiguous().T, a.double() @ b.double())
        # vector maths (MKL VML in torch), reductions, normalisation, softmax, top-k
        for v in (torch.rand(512, 65) * 10 + 0.1, torch.rand(512, 65, dtype=torch.float64)):
            add(v.sqrt(), v.rsqrt(), v.exp(), v.log(), v.tanh(), v.sigmoid(), v.pow(0.5))
            add(v.sum(0), v.mean(1), v.var(0), v.norm(dim=1), F.normalize(v, dim=1))
            add(v.softmax(1), v.log_softmax(1), v.cumsum(0), v.topk(5, dim=1).values)
            add(torch.cdist(v[:40], v[40:90]), torch.linalg.eigh(v.T @ v)[0])
        # scatter-style updates and nearest centroids, as the memories and k-means do
        feats, cents = F.normalize(torch.randn(400, 32), dim=1), torch.randn(12, 32)
        labels = (feats @ cents.T).argmax(1)
        add(labels, torch.zeros(12, 32).index_add_(0, labels, feats),
            torch.bincount(labels, minlength=12))
        # FAISS's k-means, which clusters on the CPU (its own SIMD kernels and BLAS)
        import faiss
        points = torch.randn(3000, 40).numpy()
        km = faiss.Kmeans(40, 25, niter=10, seed=3, max_points_per_centroid=10**7)
        km.train(points)
        add(torch.from_numpy(km.centroids), torch.from_numpy(km.index.search(points, 1)[1]))
    return digest.hexdigest()[:16]


def pinned_fingerprint() -> str:
    """:func:`fingerprint` of the pinned path on this machine (computed in a new process)."""
    import subprocess
    code = ("from odc_mini.run import kernels; kernels.apply_in_process(); "
            "print(kernels.fingerprint())")
    done = subprocess.run([sys.executable, "-c", code], env=pinned_env(), capture_output=True,
                          text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def machine(device) -> dict:
    """Where a run on ``device`` computes, as its history records it: the machine, torch and
    python, and on the CPU the processor, the kernel path and (pinned) its fingerprint."""
    out = {"machine": torch.cuda.get_device_name(device) if device.type == "cuda" else
           f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
           "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cpu":
        out.update(cpu=cpu_model(), kernels=describe())
        if is_pinned():      # what the exact golden check compares machines by
            out["kernel_fingerprint"] = fingerprint()
    return out


def cpu_model() -> str:
    """The processor's model name (Linux), else what ``platform`` says."""
    model = _cpuinfo("model name")
    return model if model is not None else platform.processor() or platform.machine()
