"""Experiments that reproduce the paper's claims at small scale (see extrapolate.py)."""
