"""Exceptions of the tiled VAE (issue 4: interrupt between tiles, clear NaN message)."""
from __future__ import annotations


class TiledVAEInterrupted(Exception):
    """The caller's ``should_interrupt()`` returned True; raised between two tiles."""


class NonFiniteError(FloatingPointError):
    """The VAE produced NaN or inf (typically an fp16 overflow); retry with ``upcast=True``."""


class UnsupportedVAE(TypeError):
    """The module tree does not have the LDM ``Encoder``/``Decoder`` layout the tiler understands."""
