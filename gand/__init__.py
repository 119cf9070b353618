"""gand: fault-tolerant GAN training for constrained hardware."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gand")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
