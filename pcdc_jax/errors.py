"""Typed errors. Every failure a user can cause maps to one of these (and one CLI line)."""


class PCDCError(Exception):
    """Base class of every error pcdc-jax raises on purpose."""


class PCDCFormatError(PCDCError):
    """The file is not a valid .pcdc file (magic, version, length, checksum, limits)."""


class ModelMismatchError(PCDCError):
    """The file was written by another model, or decoding on this platform disagrees."""


class ImageReadError(PCDCError):
    """An input image cannot be read or has an unsupported layout."""


class BudgetError(PCDCError):
    """The requested size budget cannot be met even at the coarsest level."""

    def __init__(self, message: str, min_bytes: int, max_ratio: float):
        super().__init__(message)
        self.min_bytes = min_bytes
        self.max_ratio = max_ratio


class ModelLoadError(PCDCError):
    """A model directory is missing or incomplete."""
