"""One line of facts per phase, for the human output of ``cxsmtp test``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from carerix_smtp.smtp.phases import (
    PHASE_AUTH,
    PHASE_CONNECT,
    PHASE_EHLO,
    PHASE_EHLO_TLS,
    PHASE_GREETING,
    PHASE_RESOLVE,
    PHASE_TLS,
)

if TYPE_CHECKING:
    from carerix_smtp.probe.dmarc import DmarcVerdict, Identifier


def size_text(size: int | None) -> str:
    if size is None:
        return "-"
    if size >= 1_000_000:
        return f"{size / 1_000_000:.1f} MB"
    if size >= 1000:
        return f"{size / 1000:.1f} kB"
    return f"{size} B"


def phase_summary(name: str, d: dict[str, Any]) -> str:
    """One line of facts for the human output."""
    if name == PHASE_RESOLVE:
        if "mx" in d:
            if d.get("implicit_mx"):
                return "no MX records; using the name itself: " + ", ".join(d["addresses"])
            mx = ", ".join(
                f"{m['preference']} {m['host']} ({', '.join(m['addresses']) or m.get('error')})"
                for m in d["mx"]
            )
            return f"MX {mx}"
        return ", ".join(d.get("addresses", []))
    if name == PHASE_CONNECT:
        if "address" not in d:
            return ""  # the error lists every address tried
        tried = [t for t in d.get("tried", []) if t.get("result") != "ok"]
        text = f"connected to {d['address']}"
        if tried:
            text += "; before: " + ", ".join(f"{t['address']} {t['result']}" for t in tried)
        return text
    if name == PHASE_GREETING:
        return str(d.get("banner", ""))
    if name in (PHASE_EHLO, PHASE_EHLO_TLS):
        caps = []
        for cap in d.get("capabilities", []):
            key = cap.split(" ", 1)[0]
            if key == "SIZE" and d.get("size"):
                caps.append(f"SIZE {size_text(d['size'])}")
            elif key in ("AUTH", "STARTTLS", "PIPELINING", "8BITMIME", "SMTPUTF8", "CHUNKING"):
                caps.append(cap)
        return ", ".join(caps) or "no extensions"
    if name == PHASE_TLS:
        if "version" not in d:
            return str(d.get("refused", ""))
        parts = [f"{d.get('version')} {d.get('cipher')}"]
        if d.get("subject"):
            parts.append(str(d["subject"]))
        if d.get("issuer"):
            parts.append(f"issuer {d['issuer']}")
        if d.get("not_after"):
            parts.append(f"valid until {d['not_after']}")
        if not d.get("verified", True):
            parts.append("NOT VERIFIED")
        return "; ".join(parts)
    if name == PHASE_AUTH and d.get("mechanism"):
        notes = []  # OAuth2 (issue 14): the provider's error status, a refreshed token
        if d.get("oauth_status"):
            notes.append(f"token refused, status {d['oauth_status']}")
        if d.get("token_refreshed"):
            notes.append("token fetched again after a refusal")
        return f"AUTH {d['mechanism']}" + (f" ({'; '.join(notes)})" if notes else "")
    return ""


def dmarc_summary(verdict: DmarcVerdict) -> str:
    """``p=reject at _dmarc.example.com; SPF pass, aligned (relaxed); no DKIM — DMARC pass``"""
    lookup = verdict.lookup
    if verdict.result == "none":
        return f"no DMARC record ({', '.join(lookup.queried)})"
    record = lookup.record
    if record is None:  # unusable record, or no DNS answer: the error says which
        return ""
    text = f"p={verdict.policy} at _dmarc.{lookup.domain}"
    if record.pct < 100:
        text += f" (pct={record.pct})"
    text += f"; {_identifier('SPF', verdict.spf, record.aspf, verdict.from_domain)}"
    text += f"; {_identifier('DKIM', verdict.dkim, record.adkim, verdict.from_domain)}"
    if verdict.result == "pass":
        return text + " — DMARC pass"
    if not verdict.enforced:
        return text + f" — DMARC fail (p={verdict.policy}: delivered, but reported)"
    return text


def _identifier(name: str, ident: Identifier, mode: str, from_domain: str) -> str:
    mode_text = {"r": "relaxed", "s": "strict"}.get(mode, mode)
    if ident.result == "none" and name == "DKIM":
        return "no DKIM"
    if not ident.passed:
        return f"{name} {ident.result}"
    if ident.aligned:
        return f"{name} pass, aligned ({mode_text})"
    return f"{name} pass for {ident.domain}, not aligned with {from_domain} ({mode_text})"
