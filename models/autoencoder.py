"""Dense autoencoder (TensorFlow/Keras) on device-relative features.

Input: the robust z-scores of a window (clipped); the network compresses them through a small
bottleneck and reconstructs ``z / INPUT_SCALE``. Anomaly score = mean squared reconstruction error;
a feature's contribution = its squared error (the features the model could not explain).
Training is deterministic: fixed seeds, deterministic ops, one thread.

Features that never varied in training (a BAD count, a range excess: 0 on every healthy device) carry
nothing to learn: the network is trained on the others, and the saved model wraps it with two fixed
linear layers, a selection of those inputs and a scatter back that reconstructs every constant
feature as its training value. So a window that leaves that value (an overload beyond a sensor's
range) has a reconstruction error there, and the network of a fleet without such readings is the
one it would be without those features.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from models.base import AnomalyModel, register

KERAS_FILE = "model.keras"
INPUT_SCALE = 3.0
INPUT_CLIP = 10.0


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    return tf


def deterministic(seed: int) -> None:
    tf = _tf()
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    for setter in (tf.config.threading.set_inter_op_parallelism_threads,
                   tf.config.threading.set_intra_op_parallelism_threads):
        try:
            setter(1)
        except RuntimeError:       # the runtime is already initialised: keep its thread pools
            pass


def build(n_features: int, hidden: tuple[int, ...] = (16, 6)):
    tf = _tf()
    layers = tf.keras.layers
    inputs = tf.keras.Input(shape=(n_features,), name="z")
    x = layers.Rescaling(1.0 / INPUT_SCALE)(inputs)
    for i, units in enumerate(hidden):
        x = layers.Dense(units, activation="tanh", name=f"enc{i}")(x)
    for i, units in enumerate(reversed(hidden[:-1])):
        x = layers.Dense(units, activation="tanh", name=f"dec{i}")(x)
    outputs = layers.Dense(n_features, activation="linear", name="reconstruction")(x)
    model = tf.keras.Model(inputs, outputs, name="autoencoder")
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss="mse")
    return model


def prepare(z: np.ndarray) -> np.ndarray:
    return np.clip(z, -INPUT_CLIP, INPUT_CLIP).astype(np.float32)


def fit(z: np.ndarray, seed: int, epochs: int = 30, batch_size: int = 256, hidden: tuple[int, ...] = (16, 6)):
    deterministic(seed)
    x = prepare(z)
    varying = np.flatnonzero(np.ptp(x, axis=0) > 0) if len(x) else np.arange(x.shape[1])
    if len(varying) == 0:
        varying = np.arange(x.shape[1])
    model = build(len(varying), hidden)
    history = model.fit(x[:, varying], x[:, varying] / INPUT_SCALE, epochs=epochs, batch_size=batch_size,
                        shuffle=True, verbose=0)
    if len(varying) < x.shape[1]:
        model = _with_constant_features(model, x.shape[1], varying, x[0] / INPUT_SCALE)
    return model, [float(v) for v in history.history["loss"]]


def _with_constant_features(network, n_features: int, varying: np.ndarray, constant: np.ndarray):
    """``network`` (on the ``varying`` inputs) as a model of all ``n_features``: fixed selection in,
    fixed scatter out, the other features reconstructed as ``constant``."""
    tf = _tf()
    layers = tf.keras.layers
    select = np.zeros((n_features, len(varying)), np.float32)
    select[varying, np.arange(len(varying))] = 1.0
    bias = np.asarray(constant, np.float32).copy()
    bias[varying] = 0.0
    inputs = tf.keras.Input(shape=(n_features,), name="z")
    pick = layers.Dense(len(varying), use_bias=False, trainable=False, name="select_varying")
    scatter = layers.Dense(n_features, trainable=False, name="constant_features")
    outputs = scatter(network(pick(inputs)))
    pick.set_weights([select])
    scatter.set_weights([select.T.copy(), bias])
    return tf.keras.Model(inputs, outputs, name="autoencoder_all_features")


def errors(model, z: np.ndarray) -> np.ndarray:
    """Per-feature squared reconstruction errors."""
    x = prepare(z)
    if len(x) == 0:
        return np.zeros((0, z.shape[1]))
    recon = np.asarray(model(x, training=False))
    return (x / INPUT_SCALE - recon).astype(np.float64) ** 2


def anomaly_score(model, z: np.ndarray) -> np.ndarray:
    return errors(model, z).mean(axis=1)


def to_bytes(model) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, KERAS_FILE)
        model.save(path)
        with open(path, "rb") as fh:
            return fh.read()


def from_bytes(payload: bytes):
    tf = _tf()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, KERAS_FILE)
        with open(path, "wb") as fh:
            fh.write(payload)
        return tf.keras.models.load_model(path, compile=False)


@register
class AutoencoderModel(AnomalyModel):
    """Served by models.handlers.KerasModelHandlerNumpy (one Keras file)."""
    name = "autoencoder"
    kind = "keras"

    def __init__(self, epochs: int = 30, batch_size: int = 256, hidden: tuple[int, ...] = (16, 6), network=None):
        self.epochs, self.batch_size, self.hidden, self.network = epochs, batch_size, tuple(hidden), network
        self._losses: list[float] = []

    @classmethod
    def from_params(cls, params) -> "AutoencoderModel":
        return cls(params.ae_epochs, params.ae_batch_size, params.ae_hidden)

    def fit(self, z, devices, seed):
        self.network, self._losses = fit(z, seed, self.epochs, self.batch_size, self.hidden)
        return self

    def score(self, z, devices=None):
        return anomaly_score(self.network, z)

    def contributions(self, z, devices=None):
        return errors(self.network, z)

    def save(self):
        return {KERAS_FILE: to_bytes(self.network)}

    @classmethod
    def load(cls, read):
        return cls(network=from_bytes(read(KERAS_FILE)))

    def fit_metrics(self):
        return {"loss_first": self._losses[0], "loss_last": self._losses[-1]} if self._losses else {}
