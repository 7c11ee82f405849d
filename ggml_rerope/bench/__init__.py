"""Benchmarks: `python -m ggml_rerope.bench attention|model|server ...` (see __main__.py)."""
