"""The SMTP client: one session is one connection -- resolve, connect, TLS, AUTH, send;
replies classified.

Where things are:

* ``session``     SmtpSession, the API: state, ``open()`` through the phases, the
  command/reply steps, QUIT;
* ``conversation`` Conversation, what the phase modules below may use of a session
  (a protocol SmtpSession implements; they never import session);
* ``resolve``     DNS: MX, then A/AAAA (dnspython), IP literals, nameserver settings;
* ``connect``     the resolve and connect phases, ConnectAttempt, connect errors;
* ``ehlo``        the greeting, EHLO (HELO fallback) and the extensions;
* ``tls``         implicit TLS and STARTTLS (RFC 3207), TlsInfo, TlsFailedError;
* ``auth``        AUTH: policy and the SASL mechanisms (a table: one function and one
  row per mechanism), AUTH_PREFERENCE, AuthFailedError;
* ``transaction`` MAIL/RCPT/DATA (or BDAT), pipelined (RFC 2920) and chained across
  messages; Transaction, SendResult;
* ``content``     a message's data after its commands: DATA content or BDAT chunks
  (RFC 3030 CHUNKING), a refusal salvaged from a server that hung up early;
* ``channel``     the socket: timed writes, buffered reply reading, ProtocolError,
  ChannelOwner (what a Channel uses of its session);
* ``wire``        bytes on the wire: Reply, parse_reply, dot-stuffing (wire_chunks),
  BDAT chunks (bdat_chunks), message_size;
* ``phases``      the phase names and PhaseTrace.

Imports: config (tls, hosts; file for types), errors, dnspython; never send/probe/
sink/cli, nor typer or rich.

Why our own small client instead of :mod:`smtplib` — every item below would need
a workaround or a private-attribute patch in smtplib:

* a timeout per phase (connect, greeting, each command, end of data; RFC 5321
  §4.5.3.2) rather than one socket timeout;
* connecting to an address we resolved ourselves (MX, IPv6 literals such as
  ``[::1]:2525``, which smtplib's ``connect()`` cannot parse) while verifying the
  certificate against the host *name*;
* STARTTLS that discards anything read before the handshake (RFC 3207 §6) and
  refuses to go on when it is required but missing, before AUTH or MAIL;
* no ``getfqdn()`` DNS lookup per connection, no debug output that prints AUTH;
* line-ending normalisation and dot-stuffing with ``bytes.replace`` on 1 MiB
  chunks written with one ``sendall`` each (smtplib's regex is slow and sends
  bare LFs verbatim), TCP_NODELAY and few large writes (msmtp stalls ~40 ms per
  message on Nagle + delayed ACK), and PIPELINING (RFC 2920) of MAIL/RCPT/DATA;
* replies as data (code, enhanced status, text) and errors that name
  ``host[address]:port`` and the phase; 421 raises instead of being mixed into
  ``SMTPDataError``; refused recipients are results, not a dict on the side.

Blocking sockets: one session is one connection; parallel connections are
several sessions (threads), which keeps this package simple and the timeouts exact.
"""
