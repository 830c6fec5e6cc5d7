"""``cxsmtp sendmail``: the sendmail-compatible way into a spool (issue 13).

- ``options.py``  the argv parser (sendmail(8), Postfix sendmail(1), msmtp options)
- ``compose.py``  stdin -> the spool file's bytes (envelope as header fields)
- ``run.py``      queue it durably; with sendmail_mode "send" a send run at once

No typer or rich here, and nothing heavy on the queue path: applications call
sendmail once per message.
"""
