"""spool package (docstring to be written)."""
