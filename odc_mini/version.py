"""The package version: a module of its own, so that any module can import it without loading
the package (``__init__`` imports the training loop, which imports most of the rest)."""
__version__ = "0.4.0"   # 0.4: the renovated layout; checkpoint format 2, memory.pt
