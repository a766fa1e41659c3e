"""pkgloader: a gRPC service loading Wasmer packages through a shared, content-addressed cache."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pkgloader")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
