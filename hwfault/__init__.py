"""hwfault: hardware-fault simulation toolkit for neural-network accelerators."""
__version__ = "0.1.0"
