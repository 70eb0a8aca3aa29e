"""The face every backend has: the three inference networks on float32 numpy arrays (NCHW),
run by name. A backend says what it is (`name`, `precision`, `device`, `config`) and
implements `run`."""
from __future__ import annotations

import numpy as np

NETWORKS = ("image_encoder", "denoiser", "decoder")


class Backend:
    name: str
    precision: str

    def run(self, network: str, *arrays: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self.run("image_encoder", images)

    def denoise(self, z_t: np.ndarray, z_i: np.ndarray, t: np.ndarray) -> np.ndarray:
        return self.run("denoiser", z_t, z_i, t)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self.run("decoder", z)
