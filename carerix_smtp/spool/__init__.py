"""The spool: the directory of messages waiting to be sent, and the message files.

Owns everything on disk under SPOOL (layout and lock, claims, the journal and
recovery, outcome records, the delivery log, the queue listing and status) and
reading a message file (header block, envelope, Message-ID/Date completion).

- ``spool.py``     Spool: the facade the sender and the CLI use (plus enqueue, retry)
- ``layout.py``    paths, checks, subdirectories, the lock, atomic writes and moves
- ``listing.py``   Candidate, CandidateList: due messages in order; SpoolStatus
- ``claims.py``    Claim: taking a message out of the queue and putting it back
- ``journal.py``   the redo log, its group commit and checkpoints ("Durability")
- ``outcomes.py``  journal line, record and move to sent/, failed/ or deferred/
- ``sent_log.py``  sent messages' records: a line each in sent/records-DAY.jsonl
- ``recovery.py``  what a killed run left behind
- ``records.py``   MessageState, RecipientResult, backoff, iso; the delivery log
- ``message.py``   Message, read_message, parse_message, complete_headers
- ``headers.py``   the header block split into fields
- ``envelope.py``  MAIL FROM and RCPT TO from the fields, address checks

May import: ``carerix_smtp.errors`` and the standard library (config/ if ever
needed); never send/, probe/, sink/, cli/, typer or rich.  Nothing is
re-exported here: import from the module (``from carerix_smtp.spool.spool import
Spool``).
"""
