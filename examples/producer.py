"""How an application puts a message into the cxsmtp spool correctly.

Write the complete file under a name cxsmtp ignores (in SPOOL/tmp/), fsync it, then
rename it to *.eml in SPOOL: the rename is atomic, so `cxsmtp send` never sees half a
message.  `cxsmtp enqueue SPOOL FILE` does the same from the shell (and adds
Message-ID and Date when missing).

    python examples/producer.py /var/spool/mailing
"""

from __future__ import annotations

import os
import sys
import uuid
from email.message import EmailMessage
from email.utils import format_datetime, localtime, make_msgid
from pathlib import Path


def enqueue(spool: Path, message: EmailMessage) -> Path:
    if "Message-ID" not in message:
        message["Message-ID"] = make_msgid(domain="example.com")
    if "Date" not in message:
        message["Date"] = format_datetime(localtime())
    tmp_dir = spool / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4().hex}.eml"
    tmp = tmp_dir / f"{name}.part"
    with open(tmp, "wb") as handle:
        handle.write(bytes(message))
        handle.flush()
        os.fsync(handle.fileno())
    final = spool / name
    os.rename(tmp, final)  # atomic: the file appears complete or not at all
    fd = os.open(spool, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename survives a crash
    finally:
        os.close(fd)
    return final


def main() -> None:
    spool = Path(sys.argv[1] if len(sys.argv) > 1 else "spool")
    message = EmailMessage()
    message["From"] = "Carerix Recruitment <jobs@example.com>"
    message["To"] = "Anna de Vries <anna.devries@example.org>"
    message["Bcc"] = "archive@example.com"  # cxsmtp sends to it but removes the header
    message["Subject"] = "Your application"
    message.set_content("Dear Anna,\n\nThank you for your application.\n")
    print(enqueue(spool, message))


if __name__ == "__main__":
    main()
