"""What every fetalhc TensorBoard callback shares: a summary writer opened when ``fit``
starts, closed when it ends, and at the end of epochs 0, N, 2N, ... one ``log_epoch`` whose
scalars also go into Keras' epoch ``logs`` (so ``EarlyStopping`` / ``CSVLogger`` listed after
the callback read them)."""

from __future__ import annotations

import keras
import tensorflow as tf


class EpochWriterCallback(keras.callbacks.Callback):
    """Base class: a subclass sets ``output_dir``, ``every_n_epochs`` and ``update_logs``,
    and defines ``check()`` (run when ``fit`` starts, so a mistake stops it before the first
    epoch) and ``log_epoch(epoch) -> scalars`` (run inside the writer's default context)."""

    _writer = None

    def check(self) -> None:
        """Everything the callback would refuse about the model, before the first epoch."""

    def log_epoch(self, epoch: int) -> dict[str, float]:
        raise NotImplementedError

    def on_train_begin(self, logs=None):
        self.check()
        self._writer = tf.summary.create_file_writer(self.output_dir)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if epoch % self.every_n_epochs:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.output_dir)
        with self._writer.as_default(step=epoch):
            scalars = self.log_epoch(epoch)
        self._writer.flush()
        if self.update_logs and logs is not None:
            logs.update(scalars)
