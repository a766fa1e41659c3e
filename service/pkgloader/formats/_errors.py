"""The reader's exceptions.

One tree, so callers need a single ``except``::

    FormatError          malformed, truncated, oversized or unsupported package bytes
     └── DetectError     the bytes are not a package at all (wrong magic, unknown webc version)

Errors of the libraries used underneath (``tarfile``, ``gzip``, ``zlib``, ``tomllib``, UTF-8
decoding, ``struct``) are translated into these at the boundary where they can occur; nothing
else escapes a parse. Operating-system errors while opening a path (missing file, permission)
are not format errors and propagate as ``OSError``.
"""

from __future__ import annotations


class FormatError(Exception):
    """The package bytes are malformed, truncated, oversized or of an unsupported kind."""


class DetectError(FormatError):
    """The bytes are neither a gzip stream nor a webc container of a supported version."""
