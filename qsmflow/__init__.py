"""qsmflow: Quantitative Susceptibility Mapping from multi-echo GRE, as a BIDS App."""

__version__ = "0.1.0"
