"""What every command prints, and what it keeps off the terminal."""

from __future__ import annotations

import logging


def quiet_third_party_logs() -> None:
    """bitsandbytes warns at import on CPU-only machines about an optional kernel package; it is harmless."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
