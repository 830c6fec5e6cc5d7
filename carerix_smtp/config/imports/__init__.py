"""``cxsmtp server import``: read another mailer's configuration into a plan
(msmtprc, Postfix's relayhost + sasl_passwd), then apply the plan to the config.

The parsers (msmtprc, postfix) are pure apart from reading files: they return an
:class:`~carerix_smtp.config.imports.plan.ImportPlan` and never write.  Passwords
found in the files stay in memory and go only to the password store (plan.py).
"""
