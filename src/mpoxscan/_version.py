"""The installed package's version, in a module of its own so every layer may import it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mpoxscan")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
