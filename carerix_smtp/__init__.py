"""cxsmtp: SMTP server entries, connection diagnosis and spool delivery."""

__version__ = "0.1.0"
