"""regbench: a benchmark of regularizers for fine-tuning pretrained language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("regbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
