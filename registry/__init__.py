"""The built-in regularizers, one module each, registered in regbench's pyproject under the same
entry-point group that third-party plugins use."""
