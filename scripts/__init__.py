"""Scripts that are neither the library nor its benchmarks (run as ``python -m scripts.<name>``)."""
