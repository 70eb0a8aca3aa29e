"""Range checks for the training stages' settings, naming the field that is out of range."""
from __future__ import annotations

from ..errors import InvalidArgumentError


def check_settings(settings, positive=(), non_negative=()) -> None:
    """Raises InvalidArgumentError for the first named field out of range."""
    for names, bad, wanted in ((positive, lambda v: v <= 0, "positive"), (non_negative, lambda v: v < 0, ">= 0")):
        for name in names:
            if bad(getattr(settings, name)):
                raise InvalidArgumentError(f"{name} must be {wanted}, got {getattr(settings, name)!r}")
