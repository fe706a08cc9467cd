"""The progress-hub performance benchmark (docs/performance.md); run it with `python -m bench`."""
