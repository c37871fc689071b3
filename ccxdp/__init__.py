"""ccxdp: an XDP DNS filter for C&C domains, managed from Python."""

__version__ = "0.1.0"
