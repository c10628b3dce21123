"""Nightly batch recommender: validated data in, published top-N Parquet out."""

__version__ = "0.1.0"
