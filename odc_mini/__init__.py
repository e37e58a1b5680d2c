"""odc_mini: Online Deep Clustering (Zhan et al., CVPR 2020) and its alternating baseline,
DeepCluster (Caron et al., ECCV 2018), small enough to read and to run from a notebook.

    import odc_mini
    run = odc_mini.train(odc_mini.Config(method="odc", profile="quick"))
"""
from .version import __version__  # noqa: E402

from .config import Config  # noqa: E402
from .kmeans import kmeans, pca_whiten  # noqa: E402
from .memory import ODCMemory  # noqa: E402
from .runfolder import Run, load_run  # noqa: E402
from .stops import TrainingDiverged  # noqa: E402
from .train import train  # noqa: E402

__all__ = ["Config", "ODCMemory", "Run", "TrainingDiverged", "kmeans", "load_run", "pca_whiten", "train", "__version__"]
