"""Benchmarks anyone can rerun (``make bench``); each module is a script with ``--help``."""
