"""The package version: a module of its own, so that any module can import it without loading
the package (``__init__`` imports the training loop, which imports most of the rest)."""
__version__ = "0.5.0"   # 0.5: every test image, the medium profile, probes during training
