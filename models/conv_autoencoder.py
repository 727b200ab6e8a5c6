"""1-D convolutional autoencoder over short sequences of windows (the "Conv-AE" of the SKAB benchmark).

A window is seen with the ``length - 1`` windows of its device that precede it: the sequence is
``length`` steps of device-relative features z (steps x features). Rows are taken in the order given
(train's datasets and score's blocks are sorted by device then window start), each device's rows on
their own, so a sequence never mixes devices even when the rows of several devices are interleaved;
the first windows of a device (in the rows given) are padded by repeating its first window.

Network (valid convolutions over time: the ``length`` steps shrink to ``length - 4``, one step for
the default 5, so the code summarises the whole sequence in 16 numbers)::

    z sequence (L, F) / INPUT_SCALE -> Conv1D 32 k3 relu -> Conv1D 16 k3 relu          (L-4, 16)
    -> Conv1DTranspose 16 k3 relu -> Conv1DTranspose 32 k3 relu -> Conv1D F k1 linear   (L, F)

trained to reconstruct its (scaled, clipped) input with fixed seeds and deterministic ops.

Score = mean squared reconstruction error of the window's own step, the sequence's last: a window's
score then depends on itself and its past only (no look-ahead, as in streaming), and one abnormal
window does not raise the scores of the ``length - 1`` windows after it the way a whole-sequence
error would (alerts would outlast the fault). Contributions = that step's per-feature squared errors
as shares of their sum. A window whose values are each normal but do not follow from its
predecessors (a sudden step, a reordering) cannot be reconstructed from the normal-sequence code.

Served by models.handlers.RegisteredModelHandler (kind "numpy", blocks of (z, device ids)): the Keras
handler scores rows one by one and knows no devices. Only the rows of one block (or one batch of
blocks) are history: a device's first windows in a block are padded.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from models import autoencoder as dense
from models.base import AnomalyModel, register

SEQ_FILE = "conv_autoencoder.keras"
FILTERS = (32, 16)
KERNEL = 3


def sequences(z: np.ndarray, devices: np.ndarray | None, length: int) -> np.ndarray:
    """(rows, length, features): each row with the ``length - 1`` preceding rows of its device (in the
    given order), the device's first row repeated where it has fewer predecessors."""
    z = np.asarray(z)
    n = len(z)
    ids = np.zeros(n, np.int64) if devices is None else np.unique(np.asarray(devices).astype(str),
                                                                  return_inverse=True)[1].reshape(-1)
    order = np.argsort(ids, kind="stable")          # each device's rows together, in the given order
    ranked = ids[order]
    new = np.r_[True, ranked[1:] != ranked[:-1]] if n else np.zeros(0, bool)
    start = np.maximum.accumulate(np.where(new, np.arange(n), 0))   # where its device's series starts
    pos = np.arange(n) - start                      # a row's position in its device's series
    lags = np.arange(length - 1, -1, -1)            # oldest step first, the row itself last
    src = order[np.arange(n)[:, None] - np.minimum(lags[None, :], pos[:, None])]
    out = np.empty((n, length) + z.shape[1:], z.dtype)
    out[order] = z[src]
    return out


def build(length: int, n_features: int):
    tf = dense._tf()
    layers = tf.keras.layers
    inputs = tf.keras.Input(shape=(length, n_features), name="z_sequence")
    x = layers.Rescaling(1.0 / dense.INPUT_SCALE)(inputs)
    for i, f in enumerate(FILTERS):
        x = layers.Conv1D(f, KERNEL, padding="valid", activation="relu", name=f"enc{i}")(x)
    for i, f in enumerate(reversed(FILTERS)):
        x = layers.Conv1DTranspose(f, KERNEL, padding="valid", activation="relu", name=f"dec{i}")(x)
    outputs = layers.Conv1D(n_features, 1, activation="linear", name="reconstruction")(x)
    model = tf.keras.Model(inputs, outputs, name="conv_autoencoder")
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss="mse")
    return model


@register
class ConvAutoencoderModel(AnomalyModel):
    name = "conv_autoencoder"
    default = False        # opt-in (--model_names ...,conv_autoencoder) until measured better than the dense one
    needs_devices = True
    SEQUENCE_LENGTH: ClassVar[int] = 5     # windows per sequence: the window and its 4 predecessors

    def __init__(self, length: int = SEQUENCE_LENGTH, epochs: int = 30, batch_size: int = 256, network=None):
        if length < 2 * (KERNEL - 1) + 1:
            raise ValueError(f"sequence length {length} < {2 * (KERNEL - 1) + 1}: the encoder's valid "
                             "convolutions need it")
        self.length, self.epochs, self.batch_size, self.network = length, epochs, batch_size, network
        self._losses: list[float] = []

    @classmethod
    def from_params(cls, params) -> "ConvAutoencoderModel":
        return cls(getattr(params, "seq_length", cls.SEQUENCE_LENGTH), params.ae_epochs, params.ae_batch_size)

    def _inputs(self, z, devices) -> np.ndarray:
        return sequences(dense.prepare(np.asarray(z, np.float64)), devices, self.length)

    def fit(self, z, devices, seed):
        dense.deterministic(seed)
        x = self._inputs(z, devices)
        self.network = build(self.length, x.shape[2])
        history = self.network.fit(x, x / dense.INPUT_SCALE, epochs=self.epochs, batch_size=self.batch_size,
                                   shuffle=True, verbose=0)
        self._losses = [float(v) for v in history.history["loss"]]
        return self

    def errors(self, z, devices=None) -> np.ndarray:
        """Per-feature squared reconstruction errors of each window's own (last) step."""
        x = self._inputs(z, devices)
        if len(x) == 0:
            return np.zeros((0, np.shape(z)[1]))
        recon = np.asarray(self.network(x, training=False))[:, -1]
        return (x[:, -1] / dense.INPUT_SCALE - recon).astype(np.float64) ** 2

    def score(self, z, devices=None):
        return self.errors(z, devices).mean(axis=1)

    def contributions(self, z, devices=None):
        err = self.errors(z, devices)
        return err / np.maximum(err.sum(axis=1, keepdims=True), 1e-12)

    def save(self):
        return {SEQ_FILE: dense.to_bytes(self.network)}

    @classmethod
    def load(cls, read):
        network = dense.from_bytes(read(SEQ_FILE))
        return cls(length=int(network.input_shape[1]), network=network)

    def fit_metrics(self):
        return {"sequence_length": self.length, "loss_first": self._losses[0],
                "loss_last": self._losses[-1]} if self._losses else {}
