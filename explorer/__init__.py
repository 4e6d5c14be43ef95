"""periscope: look inside running CPython 3.14 and 3.15 processes without restarting them."""

__version__ = "0.1.0"
