"""Exceptions of the data package: one clear message instead of a tarfile/pickle/urllib traceback."""

from __future__ import annotations

__all__ = ["CorruptDatasetError", "DataError", "DatasetNotFoundError"]


class DataError(Exception):
    """Base class of every error the data package raises about the data itself."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset file or folder is missing (and could not be downloaded); the message says where to put it."""


class CorruptDatasetError(DataError, ValueError):
    """A dataset file exists but cannot be read: truncated, corrupt, wrong checksum or wrong layout."""
