"""The package's version (also in ``pyproject.toml``), in a module of its
own so that :mod:`tasker_core.client` can name it in its ``User-Agent``."""

__version__ = "0.1.0"
