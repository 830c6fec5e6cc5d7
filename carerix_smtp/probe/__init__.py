"""probe package (docstring to be written)."""
