"""Weight averaging during training: an exponential moving average (EMA) of the weights.

``[train] ema_momentum = m`` (0 = off) keeps, beside the weights the optimiser updates, a
shadow copy ``w̄ ← m·w̄ + (1 − m)·w`` updated after every training batch, over every weight
of the model (trainable ones and batch-norm statistics alike). The effective momentum warms
up as ``min(m, (1 + t) / (10 + t))`` after ``t`` updates, so a short run is not dominated by
its random initial weights.

The averaged weights are the ones that are *judged and kept*: Keras calls
``on_test_begin`` / ``on_test_end`` around each epoch's validation, and
:class:`WeightAverage` swaps the averaged weights in for it, so the logged ``val_*`` values,
early stopping and the best checkpoint all see the averaged model; the checkpoint saves
inside :meth:`WeightAverage.averaged`. Training itself always continues from the
optimiser's own weights, and the epoch backup (kill-safety) stores those; a resumed run
restarts the average from the restored weights (its history is not in the backup). At the
end of ``fit`` the model holds the averaged weights.
"""

from __future__ import annotations

from contextlib import contextmanager

import keras
import numpy as np


def effective_momentum(momentum: float, updates: int) -> float:
    """The momentum of update number ``updates`` (0-based): ``min(m, (1 + t) / (10 + t))``."""
    return min(float(momentum), (1.0 + updates) / (10.0 + updates))


class WeightAverage(keras.callbacks.Callback):
    """Exponential moving average of all model weights, swapped in for validation.

    List it before the callbacks that should see the averaged model at epoch end (the best
    checkpoint uses :meth:`averaged`)."""

    def __init__(self, momentum: float):
        super().__init__()
        if not 0.0 < float(momentum) < 1.0:
            raise ValueError(f"ema_momentum must be in (0, 1) to average; got {momentum!r}")
        self.momentum = float(momentum)
        self.updates = 0
        self._shadow: list[np.ndarray] | None = None
        self._raw: list[np.ndarray] | None = None

    def on_train_begin(self, logs=None):
        self._shadow = [np.array(weight, dtype=np.float64) for weight in self.model.get_weights()]
        self.updates = 0

    def on_train_batch_end(self, batch, logs=None):
        if self._shadow is None or self._raw is not None:
            return
        rate = 1.0 - effective_momentum(self.momentum, self.updates)
        for shadow, weight in zip(self._shadow, self.model.get_weights(), strict=True):
            shadow += rate * (weight - shadow)
        self.updates += 1

    def _swap_in(self):
        if self._shadow is None or self._raw is not None:
            return
        self._raw = self.model.get_weights()
        self.model.set_weights([shadow.astype(raw.dtype)
                                for shadow, raw in zip(self._shadow, self._raw, strict=True)])

    def _swap_out(self):
        if self._raw is None:
            return
        self.model.set_weights(self._raw)
        self._raw = None

    @contextmanager
    def averaged(self):
        """The averaged weights in the model for the ``with`` block (nested use is fine)."""
        swapped = self._raw is None
        self._swap_in()
        try:
            yield self.model
        finally:
            if swapped:
                self._swap_out()

    def on_test_begin(self, logs=None):
        self._swap_in()

    def on_test_end(self, logs=None):
        self._swap_out()

    def on_train_end(self, logs=None):
        self._swap_in()
        self._raw = None  # the model keeps the averaged weights
