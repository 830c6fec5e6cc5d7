"""What came of one message: the per-recipient outcome of one transaction
(``classify``: reply -> accepted / deferred / failed, an ``Attempt``) and how it
updates the message's state (``state_for``, ``record_attempt``) and the delivery
log line (``delivery_log``).  Pure: no spool, no network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from carerix_smtp.spool.records import MessageState, RecipientResult, backoff

if TYPE_CHECKING:
    from carerix_smtp.config.file import ServerEntry
    from carerix_smtp.smtp.transaction import SendResult
    from carerix_smtp.smtp.wire import Reply
    from carerix_smtp.spool.claims import Claim
    from carerix_smtp.spool.message import Message


ACCEPTED, FAILED, DEFERRED = "accepted", "failed", "deferred"


@dataclass
class Attempt:
    """The outcome of sending one message on one connection; no spool involved."""

    results: dict[str, tuple[str, RecipientResult]]  # rcpt -> (accepted|failed|deferred, reply)
    connection_lost: bool = False
    unknown: bool = False  # lost after the final ".": maybe delivered (RFC 1047)
    error: str = ""
    # MAIL FROM refused: the message's reply; ``results`` then give every recipient
    # its fate (4xx deferred, 5xx failed) without a reply of its own
    mail: RecipientResult | None = None
    # Deferred by cxsmtp before the server saw it (DKIM signing failed): says nothing
    # about the server, so it does not count towards stop_after_deferrals.
    local: bool = False

    def recipients(self, outcome: str) -> list[str]:
        return [r for r, (o, _) in self.results.items() if o == outcome]


def _result(reply: Reply, now: float) -> RecipientResult:
    return RecipientResult(reply.code, reply.enhanced, " ".join(reply.text.split()), now)


def classify(result: SendResult, recipients: Sequence[str], now: float) -> Attempt:
    """SendResult -> per-recipient outcome (SPEC §3; RFC 5321 §4.2.1 reply classes).

    MAIL refused: everyone shares its fate (4xx deferred, 5xx failed) and the reply
    is the message's (``Attempt.mail``), not any recipient's.  Otherwise a
    recipient refused at RCPT keeps that reply; one accepted at RCPT takes the data
    reply: 2xx accepted, 4xx deferred, 5xx failed.
    """
    out: dict[str, tuple[str, RecipientResult]] = {}
    mail = result.mail_reply
    if not mail.ok:
        outcome = FAILED if mail.permanent else DEFERRED
        refused = _result(mail, now)
        return Attempt({r: (outcome, refused) for r in recipients}, mail=refused)
    data = result.data_reply
    for rcpt in recipients:
        reply = result.rcpt_replies.get(rcpt)
        if reply is None:
            out[rcpt] = (DEFERRED, RecipientResult(None, None, "no reply to RCPT", now))
        elif reply.permanent:
            out[rcpt] = (FAILED, _result(reply, now))
        elif not reply.ok:
            out[rcpt] = (DEFERRED, _result(reply, now))
        elif data is None:
            out[rcpt] = (DEFERRED, RecipientResult(None, None, "the data was not sent", now))
        elif data.ok:
            out[rcpt] = (ACCEPTED, _result(data, now))
        else:
            out[rcpt] = (FAILED if data.permanent else DEFERRED, _result(data, now))
    return Attempt(out)


def everyone(
    recipients: Sequence[str], outcome: str, result: RecipientResult, **kw: Any
) -> Attempt:
    return Attempt({r: (outcome, result) for r in recipients}, **kw)


def last_reply(attempt: Attempt) -> str:
    if attempt.mail is not None:
        return f"MAIL FROM refused: {attempt.mail.describe()}"
    for _, (_, result) in reversed(list(attempt.results.items())):
        return result.describe()
    return attempt.error or "no reply"


def pending_for(claim: Claim, message: Message) -> list[str]:
    """The recipients ``state_for`` will give the message (without making its state:
    asked of the next message, whose state is made when its turn comes)."""
    state = claim.state
    if state is None:
        return list(message.recipients)
    if state.pending:
        return list(state.pending)
    return [r for r in message.recipients if r not in state.accepted and r not in state.failed]


def state_for(claim: Claim, message: Message) -> MessageState:
    state = claim.state
    if state is None or not state.pending:
        done = set(state.accepted) | set(state.failed) if state else set()
        state = state or MessageState(name=claim.name, queued_at=claim.mtime)
        state.pending = {r: None for r in message.recipients if r not in done}
    state.message_id = message.message_id
    state.mail_from = message.mail_from
    state.size = message.size
    return state


def record_attempt(
    state: MessageState, entry: ServerEntry, attempt: Attempt, start: float, now: float
) -> None:
    """Fold ``attempt`` into ``state``: per-recipient results, the next retry (backoff)
    or, past ``max_queue_age``, failure; and the reason."""
    state.server = entry.name
    state.attempts += 1
    state.first_attempt = state.first_attempt or start
    state.last_attempt = now
    state.reply = attempt.mail  # a refusal of an earlier attempt is history
    for rcpt, (outcome, result) in attempt.results.items():
        earlier = state.pending.pop(rcpt, None)
        if attempt.mail is not None:  # no recipient was tried: keep the message's reply apart
            if outcome == FAILED:
                result = RecipientResult(None, None, "not tried: MAIL FROM refused", now)
            else:
                state.pending[rcpt] = earlier
                continue
        if outcome == ACCEPTED:
            state.accepted[rcpt] = result
        elif outcome == FAILED:
            state.failed[rcpt] = result
        else:
            state.pending[rcpt] = result
    state.next_attempt = None
    if state.pending:
        age = now - (state.queued_at or now)
        if age >= entry.max_queue_age:
            for rcpt, last in state.pending.items():
                state.failed[rcpt] = last or RecipientResult(None, None, "not tried", now)
            state.pending = {}
            state.reason = (
                f"too old: queued {age / 3600:.0f} h ago, more than max_queue_age "
                f"{entry.max_queue_age / 3600:.0f} h; last error: {last_reply(attempt)}"
            )
        else:
            delay = backoff(state.attempts, entry.retry_initial, entry.retry_max)
            state.next_attempt = now + delay
            state.reason = f"deferred: {last_reply(attempt)}"
    if not state.pending:
        if state.accepted and state.failed:
            state.reason = f"sent; {len(state.failed)} recipient(s) refused"
        elif state.accepted:
            state.reason = "sent"
        elif not state.reason.startswith("too old"):
            state.reason = f"failed: {last_reply(attempt)}"


def delivery_log(
    claim: Claim,
    message: Message,
    entry: ServerEntry,
    state: MessageState,
    attempt: Attempt,
) -> dict[str, Any]:
    """The delivery log's line for one attempt (``Spool.log_delivery``), once
    ``Spool.record_outcome`` has placed the message (``state.status``/``state.name``)."""
    accepted: dict[str, str] = {}
    refused: dict[str, str] = {}
    deferred: dict[str, str] = {}
    by_outcome = {ACCEPTED: accepted, FAILED: refused, DEFERRED: deferred}
    for rcpt, (outcome, result) in attempt.results.items():  # one pass, not three
        group = by_outcome.get(outcome)
        if group is not None:
            group[rcpt] = result.describe()
    return {
        "file": claim.name,
        "message_id": message.message_id,
        "server": entry.name,
        "attempt": state.attempts,
        "accepted": accepted,
        "refused": refused,
        "deferred": deferred,
        "outcome": state.status,
        "moved_to": f"{state.status}/{state.name}",
        **({"error": attempt.error} if attempt.error else {}),
        **({"reply": f"MAIL FROM: {attempt.mail.describe()}"} if attempt.mail else {}),
        **({"possible_duplicate": True} if attempt.unknown else {}),
    }
