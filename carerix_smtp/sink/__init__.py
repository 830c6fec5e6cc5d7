"""sink package (docstring to be written)."""
