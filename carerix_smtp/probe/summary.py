"""One line of facts per phase, for the human output of ``cxsmtp test``."""

from __future__ import annotations

from typing import Any

from carerix_smtp.smtp.phases import (
    PHASE_AUTH,
    PHASE_CONNECT,
    PHASE_EHLO,
    PHASE_EHLO_TLS,
    PHASE_GREETING,
    PHASE_RESOLVE,
    PHASE_TLS,
)


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
