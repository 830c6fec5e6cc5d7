"""What ``cxsmtp test`` does: run the phases against one server entry and report
each (report), the probe's own phases — SIZE, a test message, SPF, DKIM, DMARC,
QUIT — (phases), their recording into the report (record) with a one-line summary
each (summary), the hint for the phase that failed (hints), the exit code
(exit_codes), the entry points and --wait-until-ready (probe), an RFC 7208 SPF
evaluator (spf), the DKIM key-record check (dkim_check), the DMARC policy and
alignment (dmarc), and the TXT lookups and tag=value syntax those two share (txt).

Owns the diagnosis and its hints; returns data, never prints.  May import
``carerix_smtp.smtp``, ``carerix_smtp.config`` and ``carerix_smtp.errors`` (plus the
standard library, dnspython and cryptography); never typer or rich.  Only ``carerix_smtp.cli``
imports it.
"""
