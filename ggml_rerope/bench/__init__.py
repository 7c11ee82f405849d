"""Benchmarks: `python -m ggml_rerope.bench attention|model ...` (see __main__.py)."""
