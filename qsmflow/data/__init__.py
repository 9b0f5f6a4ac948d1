"""Data shipped with qsmflow (see README.md)."""
