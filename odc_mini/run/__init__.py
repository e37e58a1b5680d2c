"""A run's life around the training loop: its start (``start``), the public ``train`` with
checkpoints and resume (``session``), its folder (``runfolder``), how it stops early (``stops``),
the kernel path it computes on (``kernels``), its float precision (``precision``) and several
processes (``distributed``). The algorithm (``odc_mini/*.py``) imports nothing from here."""
