"""Queue what sendmail read, durably, the way ``cxsmtp enqueue`` does (Spool.enqueue:
SPOOL/tmp/, fsync, rename); with sendmail_mode "send" then one ``send`` run within
the limits.  If another run holds the spool's lock, queuing is enough: that run or
the next cron run sends it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from carerix_smtp.config.file import Config
from carerix_smtp.config.spool_path import resolve_spool
from carerix_smtp.errors import CxsmtpError, StorageError
from carerix_smtp.sendmail.compose import compose
from carerix_smtp.sendmail.options import SendmailOptions

if TYPE_CHECKING:
    from carerix_smtp.send.report import RunSummary

log = logging.getLogger(__name__)


@dataclass
class Queued:
    path: Path  # the queued file
    summary: RunSummary | None = None  # the send run (sendmail_mode "send")
    send_error: CxsmtpError | None = None  # why that run could not be made


def queue_message(
    data: bytes,
    opts: SendmailOptions,
    config: Config,
    env: Mapping[str, str],
    *,
    state_dir: Path,
    spool: Path | None = None,
) -> Queued:
    """Compose, queue durably, and send at once when the configuration says so."""
    from carerix_smtp.spool.spool import Spool

    target = resolve_spool(spool, config, env)
    message = compose(data, opts)
    queued = Queued(Spool(target).enqueue(message, hint="sendmail"))
    log.info("queued %s", queued.path)
    if config.settings.sendmail_mode == "send":
        try:
            queued.summary = send_run(target, config, state_dir)
        except CxsmtpError as exc:  # queued already: the next run sends it
            queued.send_error = exc
        except OSError as exc:
            queued.send_error = StorageError.from_os_error(exc, "send from", target)
    return queued


def send_run(spool: Path, config: Config, state_dir: Path) -> RunSummary:
    """One plain ``cxsmtp send SPOOL`` run (a batch per server, within the limits)."""
    from carerix_smtp.limits.open import open_ledger
    from carerix_smtp.send.report import SendOptions
    from carerix_smtp.send.run import run_send

    return run_send(
        spool,
        config,
        SendOptions(),
        ledger=lambda: open_ledger(config.settings, state_dir),
        history_dir=state_dir,
        quiet=True,
    )
