"""What an infer request's log line says: never pixel values or patient data."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class InferLog:
    """Filled in as the request is read and run, so that a refusal's line says how far it got."""
    id: str
    shape: tuple | None = None
    dtype: str | None = None
    n: object = None
    steps: object = None
    seed: object = None
    bytes_in: int = 0
    bytes_out: int = 0
    queue_ms: float | None = None

    def __str__(self) -> str:
        return " ".join(f"{key}={value!r}" for key, value in vars(self).items())
