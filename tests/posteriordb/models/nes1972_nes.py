"""The nes model (`_nes.py`) on the 1972 survey."""

from __future__ import annotations

from . import Run
from ._nes import model

POSTERIOR = "nes1972-nes"
RUN = Run()

__all__ = ["POSTERIOR", "RUN", "model"]
