"""The installed distribution's version: written once, in the source tree's `client/VERSION`."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pkgloader-client")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
