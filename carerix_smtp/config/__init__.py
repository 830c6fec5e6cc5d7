"""config package (docstring to be written)."""
