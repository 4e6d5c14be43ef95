"""periscope: look inside running CPython 3.14+ processes without restarting them."""

__version__ = "0.1.0"
