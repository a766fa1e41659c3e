"""pkgloader's benchmarks, each beside its baselines: `python -m bench` (see `__main__`)."""
