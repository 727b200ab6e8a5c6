"""A toy model registered from outside models/: the whole plug-in is this file.

Score = mean |z| of a window, contributions = |z|; its one file is a small JSON. It is not a
default model, so it is trained and scored only where asked for (``--model_names ...,toy``).
"""
from __future__ import annotations

import json

import numpy as np

from models.base import AnomalyModel, register


@register
class ToyModel(AnomalyModel):
    name = "toy"
    default = False

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def fit(self, z, devices, seed):
        self.scale = float(np.mean(np.abs(z))) or 1.0
        return self

    def score(self, z, devices=None):
        return np.abs(z).mean(axis=1) / self.scale

    def contributions(self, z, devices=None):
        return np.abs(z)

    def save(self):
        return {"toy.json": json.dumps({"scale": self.scale}).encode()}

    @classmethod
    def load(cls, read):
        return cls(**json.loads(read("toy.json")))
