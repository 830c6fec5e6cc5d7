"""limits package (docstring to be written)."""
