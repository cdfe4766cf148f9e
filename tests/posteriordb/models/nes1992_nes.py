"""The nes model (`_nes.py`) on the 1992 survey."""

from __future__ import annotations

from . import Run
from ._nes import model

POSTERIOR = "nes1992-nes"
RUN = Run()

__all__ = ["POSTERIOR", "RUN", "model"]
