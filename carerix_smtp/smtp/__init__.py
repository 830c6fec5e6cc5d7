"""smtp package (docstring to be written)."""
