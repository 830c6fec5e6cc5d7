"""What the user configures: host syntax (hosts), the TLS policy by port (tls), the
configuration file (file), server entries as a library (servers) and where a
server's password comes from (passwords).

Owns the TOML file and the keyring/env/command password sources; knows nothing of
SMTP sessions, the spool or sending.  May import only ``carerix_smtp.errors`` and the
standard library / tomli-w / keyring.  Every other package may import it.
"""
