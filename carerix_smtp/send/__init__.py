"""send package (docstring to be written)."""
