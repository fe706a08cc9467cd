"""The progress-hub performance benchmark (issue 6); run it with `python -m bench`."""
