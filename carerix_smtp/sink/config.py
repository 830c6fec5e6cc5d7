"""What a sink is asked to do: :class:`SinkConfig`, the fault rule types
(:class:`FailRule`, :class:`PhaseRule`) and their parsing from the CLI's option
strings (``--fail``, ``--drop``, ``--hang``, ``--listen``, ``--auth``).

Light on purpose (no ssl, no aiosmtpd): ``cxsmtp sink`` builds its config from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from carerix_smtp.errors import UsageError

Phase = Literal["connect", "ehlo", "mail", "rcpt", "data", "eod"]
PHASES: tuple[str, ...] = get_args(Phase)
TlsOption = Literal["implicit", "starttls"]


# --------------------------------------------------------------------------- rules

# Enhanced status codes (RFC 3463) and texts for scripted replies.
_REPLY_TEXT: dict[int, tuple[str, str]] = {
    421: ("4.3.2", "Service not available, closing transmission channel"),
    450: ("4.2.1", "Mailbox temporarily unavailable"),
    451: ("4.3.0", "Local error in processing, try again later"),
    452: ("4.3.1", "Insufficient system storage"),
    500: ("5.5.2", "Syntax error, command unrecognized"),
    501: ("5.5.4", "Syntax error in parameters"),
    503: ("5.5.1", "Bad sequence of commands"),
    530: ("5.7.0", "Authentication required"),
    535: ("5.7.8", "Authentication credentials invalid"),
    550: ("5.1.1", "Mailbox unavailable"),
    551: ("5.1.6", "User not local"),
    552: ("5.3.4", "Message size exceeds fixed maximum message size"),
    553: ("5.1.3", "Mailbox name not allowed"),
    554: ("5.6.0", "Transaction failed"),
}


def scripted_reply(code: int, phase: str) -> str:
    """The reply line a fail rule sends: ``451 4.3.0 Local error… (cxsmtp sink: eod)``."""
    enhanced, text = _REPLY_TEXT.get(code, (f"{code // 100}.0.0", "Scripted failure"))
    return f"{code} {enhanced} {text} (cxsmtp sink: {phase})"


@dataclass(frozen=True)
class FailRule:
    """Reply ``code`` (4xx/5xx) at ``phase`` instead of accepting."""

    phase: str
    code: int
    after_n: int = 0
    pattern: str | None = None
    times: int | None = None

    def __post_init__(self) -> None:
        _check_rule(self.phase, self.after_n, self.times, "fail")
        if not 400 <= self.code <= 599:
            raise UsageError(f"fail rule code {self.code}: accepted codes are 400 to 599")
        if self.pattern is not None and self.phase not in ("mail", "rcpt"):
            raise UsageError(
                f"fail rule {self.phase}:{self.code}: pattern= applies to mail and rcpt only"
            )

    @property
    def reply(self) -> str:
        return scripted_reply(self.code, self.phase)


@dataclass(frozen=True)
class PhaseRule:
    """A ``drop`` (close without a reply) or ``hang`` (never reply) at ``phase``."""

    phase: str
    after_n: int = 0
    times: int | None = None

    def __post_init__(self) -> None:
        _check_rule(self.phase, self.after_n, self.times, "drop/hang")


def _check_rule(phase: str, after_n: int, times: int | None, kind: str) -> None:
    if phase not in PHASES:
        raise UsageError(f"{kind} rule phase {phase!r}: accepted phases are {', '.join(PHASES)}")
    if after_n < 0:
        raise UsageError(f"{kind} rule after={after_n}: must be 0 or more")
    if times is not None and times < 1:
        raise UsageError(f"{kind} rule times={times}: must be 1 or more")


FAIL_SYNTAX = (
    "PHASE:CODE[:N][:after=N][:times=K][:pattern=GLOB], PHASE one of "
    + "|".join(PHASES)
    + ", CODE 400-599, pattern= last and for mail/rcpt only "
    "(e.g. eod:451, rcpt:550:pattern=*@bad.example, mail:421:after=3)"
)
PHASE_RULE_SYNTAX = (
    "PHASE[:N][:after=N][:times=K], PHASE one of " + "|".join(PHASES) + " (e.g. eod, eod:3)"
)


def _parse_int(text: str, what: str, rule: str, syntax: str) -> int:
    if not text.isdigit():
        raise UsageError(f"invalid rule {rule!r}: {what} must be a number; accepted: {syntax}")
    return int(text)


def _parse_options(
    rule: str, rest: str, syntax: str, allow_pattern: bool
) -> tuple[int, int | None, str | None]:
    after_n, times, pattern = 0, None, None
    while rest:
        if allow_pattern and rest.startswith("pattern="):
            pattern = rest[len("pattern=") :]  # the rest of the text: a glob may hold ":"
            if not pattern:
                raise UsageError(f"invalid rule {rule!r}: empty pattern; accepted: {syntax}")
            break
        token, _, rest = rest.partition(":")
        key, eq, value = token.partition("=")
        if not eq:
            after_n = _parse_int(token, "N (messages accepted before the fault)", rule, syntax)
        elif key == "after":
            after_n = _parse_int(value, "after", rule, syntax)
        elif key == "times":
            times = _parse_int(value, "times", rule, syntax)
        else:
            raise UsageError(f"invalid rule {rule!r}: unknown option {token!r}; accepted: {syntax}")
    return after_n, times, pattern


def parse_fail_rule(text: str) -> FailRule:
    """``PHASE:CODE[:N][:after=N][:times=K][:pattern=GLOB]`` -> :class:`FailRule`."""
    phase, _, rest = text.strip().partition(":")
    code_text, _, rest = rest.partition(":")
    phase = phase.lower()
    if phase not in PHASES:
        raise UsageError(f"invalid fail rule {text!r}: unknown phase; accepted: {FAIL_SYNTAX}")
    if not code_text:
        raise UsageError(f"invalid fail rule {text!r}: missing CODE; accepted: {FAIL_SYNTAX}")
    code = _parse_int(code_text, "CODE", text, FAIL_SYNTAX)
    after_n, times, pattern = _parse_options(text, rest, FAIL_SYNTAX, allow_pattern=True)
    try:
        return FailRule(phase, code, after_n=after_n, pattern=pattern, times=times)
    except UsageError as exc:
        raise UsageError(f"invalid fail rule {text!r}: {exc}; accepted: {FAIL_SYNTAX}") from None


def parse_phase_rule(text: str) -> PhaseRule:
    """``PHASE[:N][:after=N][:times=K]`` (``--drop``, ``--hang``) -> :class:`PhaseRule`."""
    phase, _, rest = text.strip().partition(":")
    phase = phase.lower()
    if phase not in PHASES:
        raise UsageError(f"invalid rule {text!r}: unknown phase; accepted: {PHASE_RULE_SYNTAX}")
    after_n, times, _ = _parse_options(text, rest, PHASE_RULE_SYNTAX, allow_pattern=False)
    try:
        return PhaseRule(phase, after_n=after_n, times=times)
    except UsageError as exc:
        raise UsageError(f"invalid rule {text!r}: {exc}; accepted: {PHASE_RULE_SYNTAX}") from None


def parse_auth(text: str) -> tuple[str, str]:
    """``USER:PASSWORD`` (split at the first colon) -> (user, password)."""
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        # never repeat the value: it holds a password
        raise UsageError("invalid AUTH credentials: accepted USER:PASSWORD, both non-empty")
    return user, password


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT``, ``:PORT`` or ``PORT`` -> (host, port)."""
    accepted = "accepted: HOST:PORT, [IPV6]:PORT or PORT (e.g. 127.0.0.1:2525, [::1]:0)"
    value = text.strip()
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise UsageError(f"invalid listen address {text!r}; {accepted}")
    elif value.count(":") > 1:
        raise UsageError(f"invalid listen address {text!r}: put IPv6 in brackets; {accepted}")
    elif ":" in value:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = "", value
    host = host or "127.0.0.1"
    if not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"invalid listen address {text!r}: port must be 0-65535; {accepted}")
    return host, int(port_text)


# --------------------------------------------------------------------------- config


@dataclass
class SinkConfig:
    """Everything a :class:`Sink` can be asked to do.  Port 0 picks a free port."""

    host: str = "127.0.0.1"
    port: int = 0
    out_dir: Path | None = None  # None: keep messages in memory only
    allow_remote: bool = False
    tls: TlsOption | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_out: Path | None = None  # also write the generated CA's PEM here
    require_starttls: bool = False
    auth: tuple[str, str] | None = None
    # OAuth2 (XOAUTH2/OAUTHBEARER): the access tokens accepted, for ``oauth_user``
    # (None: any user); ``oauth_mechanisms``: which of the two are offered.
    oauth_tokens: tuple[str, ...] = ()
    oauth_user: str | None = None
    oauth_mechanisms: tuple[str, ...] = ("OAUTHBEARER", "XOAUTH2")
    auth_required: bool = False
    auth_require_tls: bool = True
    latency_ms: float = 0.0
    size: int | None = None  # advertise SIZE N and refuse bigger messages (552 5.3.4)
    max_connections: int | None = None  # 421 4.7.0 at greeting beyond this
    fail: list[FailRule] = field(default_factory=list)
    drop: list[PhaseRule] = field(default_factory=list)
    hang: list[PhaseRule] = field(default_factory=list)
    pipelining: bool = True
    chunking: bool = False  # offer CHUNKING (RFC 3030 BDAT), as Postfix does
    keep_data: bool = True  # False: Received.data is b"" (long runs, big messages)
    fsync: bool = True
    idle_timeout: float = 300.0  # RFC 5321 §4.5.3.2.7: server timeout 5 minutes

    def __repr__(self) -> str:  # never show the password or a token
        auth = None if self.auth is None else (self.auth[0], "***")
        tokens = len(self.oauth_tokens)
        return (
            f"SinkConfig(host={self.host!r}, port={self.port}, tls={self.tls!r}, auth={auth!r}, "
            f"oauth_tokens={tokens})"
        )

    @property
    def auth_offered(self) -> tuple[str, ...]:
        """The AUTH mechanisms offered (once the session may authenticate)."""
        password = ("LOGIN", "PLAIN") if self.auth is not None else ()
        return password + (self.oauth_mechanisms if self.oauth_tokens else ())

    def validate(self) -> None:
        """Raise :class:`UsageError` for combinations that cannot work."""
        if not 0 <= self.port <= 65535:
            raise UsageError(f"sink port {self.port}: accepted 0-65535")
        if (self.cert_file is None) != (self.key_file is None):
            raise UsageError("sink: give both a certificate file and a key file, or neither")
        if self.tls is None and (self.cert_file is not None or self.ca_out is not None):
            raise UsageError("sink: a certificate or CA output needs TLS (implicit or starttls)")
        if self.tls is not None and self.tls not in get_args(TlsOption):
            raise UsageError(f"sink TLS mode {self.tls!r}: accepted implicit, starttls")
        if self.ca_out is not None and self.cert_file is not None:
            raise UsageError("sink: the CA output is for the generated certificate only")
        if self.require_starttls and self.tls != "starttls":
            raise UsageError("sink: require_starttls needs tls='starttls'")
        if self.auth_required and self.auth is None and not self.oauth_tokens:
            raise UsageError("sink: AUTH required but no user:password or OAuth2 token given")
        unknown = set(self.oauth_mechanisms) - {"OAUTHBEARER", "XOAUTH2"}
        if unknown or (self.oauth_tokens and not self.oauth_mechanisms):
            raise UsageError("sink OAuth2 mechanisms: accepted OAUTHBEARER and/or XOAUTH2")
        if any(not t or not t.isprintable() or " " in t for t in self.oauth_tokens):
            raise UsageError("sink: an OAuth2 token must be one word of printable characters")
        if self.latency_ms < 0:
            raise UsageError(f"sink latency {self.latency_ms} ms: must be 0 or more")
        if self.size is not None and self.size < 1:
            raise UsageError(f"sink SIZE {self.size}: must be 1 or more")
        if self.max_connections is not None and self.max_connections < 1:
            raise UsageError(f"sink max connections {self.max_connections}: must be 1 or more")


def config_from_options(
    listen: str,
    *,
    auth: str | None,
    fail: Sequence[str],
    drop: Sequence[str],
    hang: Sequence[str],
    **settings: Any,
) -> SinkConfig:
    """A :class:`SinkConfig` from ``cxsmtp sink``'s option strings: ``listen`` as
    HOST:PORT, ``auth`` as USER:PASSWORD, the rules in their CLI syntax; ``settings``
    are the other :class:`SinkConfig` fields as they are."""
    host, port = parse_listen(listen)
    return SinkConfig(
        host=host,
        port=port,
        auth=parse_auth(auth) if auth is not None else None,
        fail=[parse_fail_rule(rule) for rule in fail],
        drop=[parse_phase_rule(rule) for rule in drop],
        hang=[parse_phase_rule(rule) for rule in hang],
        **settings,
    )
