"""The sink: the local capture SMTP server behind ``cxsmtp sink`` (SPEC §4), on
aiosmtpd, and its fault scripts.

It listens on loopback, stores every message it accepts as an ``.eml`` file and
keeps an in-memory record of it, and can misbehave on purpose: TLS with a
generated certificate, AUTH, added latency, SIZE, a connection limit, and
scripted faults (error replies, dropped connections, silence).

Modules: ``config`` (SinkConfig, rules and their option syntax), ``faults`` (which
rule fires), ``store`` (Received, the .eml files), ``protocol`` (one connection),
``handler`` (the SMTP command hooks, AUTH), ``tls`` (server certificate),
``server`` (Sink: thread, socket, accounting), ``run`` (serve until a signal).

May import: ``carerix_smtp.errors``, aiosmtpd, trustme (lazily) and the standard
library; never typer or rich.  Used by ``cli/``, the tests and bench/.
"""

# Here, not in ``config``: ``cxsmtp``'s option defaults need it at every start, and
# the sink's modules only when it runs.
DEFAULT_LISTEN = "127.0.0.1:2525"
