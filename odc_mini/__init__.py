"""odc_mini: Online Deep Clustering (Zhan et al., CVPR 2020) and its alternating baseline,
DeepCluster (Caron et al., ECCV 2018), small enough to read and to run from a notebook.

    import odc_mini
    run = odc_mini.train(odc_mini.Config(method="odc", profile="quick"))

The algorithm sits in this folder, one concept a module (``config``, ``data``, ``augment``,
``models``, ``kmeans``, ``memory``, ``method``, ``odc``, ``deepcluster``, ``train``, ``recorder``,
``evaluate``, ``history``). Two rooms hold the rest: ``odc_mini.run``, a run's life (its folder,
checkpoints and resume, stops, kernel pinning, precision, several processes), and
``odc_mini.study``, what the book and the command line use to store, replay and compare runs.
"""
from .version import __version__  # noqa: E402

from .config import Config  # noqa: E402
from .kmeans import cluster, pca_whiten  # noqa: E402
from .memory import ODCMemory  # noqa: E402
from .run.runfolder import Run, load_run  # noqa: E402
from .run.session import train  # noqa: E402
from .run.stops import TrainingDiverged  # noqa: E402

__all__ = ["Config", "ODCMemory", "Run", "TrainingDiverged", "cluster", "load_run", "pca_whiten",
           "train", "__version__"]
