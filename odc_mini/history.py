"""What a run records, saved as one small ``.npz`` file that loads without torch or pickles.

Three kinds of records:

* **per iteration** (``iteration(key)``): ``loss``, ``acc`` (head top-1 against the pseudo-labels),
  ``change_ratio`` (fraction of the batch whose label changed), ``epoch`` (a float that reaches e at
  the end of epoch e, so 2.5 is the middle of epoch 3), ``lr``;
* **per epoch** (``epoch(key)``): one row per epoch, row 0 being the state *before training*
  (the random-init network), e.g. ``knn_top1``, ``nmi_classes``, ``nmi_previous``, ``drift``;
* **arrays**: the label bank per epoch (``labels(e)``), cluster sizes per epoch (``sizes(e)``),
  and snapshots of a fixed subset of images — their neck features and labels — every few epochs
  (``snapshot(e)``), for embeddings such as UMAP.

The meta-data (config, package version, machine) is stored as JSON inside the same file.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from .files import atomic_write


class History:
    def __init__(self, meta: dict | None = None):
        self.meta: dict = dict(meta or {})
        self._iters: dict[str, list[np.ndarray]] = {}
        self._epochs: list[dict[str, float]] = []
        self.arrays: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ recording
    def add_iterations(self, **columns: np.ndarray) -> None:
        """Append equal-length 1-D arrays, one per key (a whole epoch's worth at once)."""
        for key, values in columns.items():
            self._iters.setdefault(key, []).append(np.asarray(values, dtype=np.float32).ravel())

    def add_epoch(self, **scalars: float) -> None:
        self._epochs.append({k: float(v) for k, v in scalars.items()})

    def set_array(self, name: str, array: np.ndarray) -> None:
        self.arrays[name] = np.asarray(array)

    # ------------------------------------------------------------------ reading
    def iteration(self, key: str) -> np.ndarray:
        """(T,) the per-iteration column ``key``."""
        if key not in self._iters:
            raise KeyError(f"no per-iteration record {key!r}; recorded: {', '.join(self._iters)}")
        return np.concatenate(self._iters[key])

    @property
    def iteration_keys(self) -> list[str]:
        return list(self._iters)

    @property
    def num_epochs(self) -> int:
        """Number of epochs recorded (row 0, before training, not counted)."""
        return max(len(self._epochs) - 1, 0)

    def epoch(self, key: str) -> np.ndarray:
        """(E + 1,) the per-epoch column ``key``; NaN where an epoch did not record it."""
        return np.array([row.get(key, np.nan) for row in self._epochs], dtype=np.float64)

    @property
    def epoch_keys(self) -> list[str]:
        """Every per-epoch key, in the order first recorded."""
        return list(dict.fromkeys(key for row in self._epochs for key in row))

    def last(self, key: str) -> float:
        """The last recorded (non-NaN) value of a per-epoch column."""
        values = self.epoch(key)
        values = values[~np.isnan(values)]
        return float(values[-1]) if len(values) else float("nan")

    def labels(self, epoch: int) -> np.ndarray:
        """(N,) pseudo-labels at the end of ``epoch`` (0: the initial clustering)."""
        return self._array("labels", epoch, self.label_epochs)

    @property
    def label_epochs(self) -> list[int]:
        """The epochs whose whole label bank is kept (all of them, unless :meth:`compact` dropped some)."""
        return sorted(int(k.split("/")[-1]) for k in self.arrays if k.startswith("labels/"))

    def _array(self, kind: str, epoch: int, kept: list[int]) -> np.ndarray:
        try:
            return self.arrays[f"{kind}/{epoch}"]
        except KeyError:
            raise KeyError(f"this history keeps no {kind} for epoch {epoch}; kept: "
                           f"{', '.join(map(str, kept)) or 'none'}") from None

    def sizes(self, epoch: int) -> np.ndarray:
        """(K,) cluster sizes at the end of ``epoch``."""
        return self.arrays[f"sizes/{epoch}"]

    @property
    def snapshot_epochs(self) -> list[int]:
        return sorted(int(k.split("/")[-1]) for k in self.arrays if k.startswith("snapshot_features/"))

    def snapshot(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(features (S, D) float32, pseudo-labels (S,)) of the snapshot images at ``epoch``.
        Their indices and true classes are ``arrays['snapshot_indices']`` / ``['snapshot_targets']``."""
        features = self._array("snapshot_features", epoch, self.snapshot_epochs)
        return features.astype(np.float32), self.arrays[f"snapshot_labels/{epoch}"]

    def compact(self, label_epochs=None, snapshot_epochs=None) -> "History":
        """A copy that keeps every per-iteration and per-epoch record, the cluster sizes and the
        true classes, but the label bank only at ``label_epochs`` and the snapshots only at
        ``snapshot_epochs`` (``None``: keep all). The label banks and snapshots are nearly all of
        a history's size (100 epochs of CIFAR-10: 10 MB of labels, 1 MB per snapshot), and the
        per-epoch records computed from them (NMI, churn, drift) are already kept."""
        keep = {"labels": None if label_epochs is None else {int(e) for e in label_epochs},
                "snapshot": None if snapshot_epochs is None else {int(e) for e in snapshot_epochs}}
        out = History(json.loads(json.dumps(self.meta)))
        out._epochs = [dict(row) for row in self._epochs]
        out._iters = {k: [self.iteration(k)] for k in self._iters}
        for name, array in self.arrays.items():
            kind, _, epoch = name.rpartition("/")
            group = "snapshot" if kind.startswith("snapshot_") else kind
            if epoch.isdigit() and keep.get(group) is not None and int(epoch) not in keep[group]:
                continue
            out.arrays[name] = array
        return out

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write one compressed ``.npz`` (no pickles) atomically (``files.atomic_write``)."""
        return atomic_write(path, lambda f: f.write(self.to_bytes()))

    def to_bytes(self, compress: bool = True) -> bytes:
        """The content of the ``.npz`` file :meth:`save` writes. Checkpoints embed it
        uncompressed: compressing 100 epochs of CIFAR-10 labels takes over a second."""
        payload = {"meta": np.array(json.dumps(self.meta)),
                   "epochs": np.array(json.dumps(self._epochs)),
                   **{f"iter/{key}": self.iteration(key) for key in self._iters}, **self.arrays}
        buffer = io.BytesIO()
        (np.savez_compressed if compress else np.savez)(buffer, **payload)
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> "History":
        path = Path(path)
        return cls._read(path, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "history bytes") -> "History":
        """Inverse of :meth:`to_bytes`; ``source`` names the data in error messages."""
        return cls._read(io.BytesIO(data), source)

    @classmethod
    def _read(cls, file, source: str) -> "History":
        try:
            with np.load(file, allow_pickle=False) as data:
                history = cls(json.loads(str(data["meta"])))
                history._epochs = json.loads(str(data["epochs"]))
                for key in data.files:
                    if key.startswith("iter/"):
                        history._iters[key[5:]] = [data[key]]
                    elif key not in ("meta", "epochs"):
                        history.arrays[key] = data[key]
        except FileNotFoundError:
            raise
        except Exception as err:  # zip, json or key errors all mean "not a history file"
            reason = " ".join(str(err).split())   # one line
            raise ValueError(f"{source} is not a readable odc_mini history file "
                             f"({type(err).__name__}: {reason})") from None
        if not isinstance(history.meta, dict) or not isinstance(history._epochs, list):
            raise ValueError(f"{source} is not an odc_mini history file (its meta or epochs "
                             "record has the wrong type)")
        return history
