"""The fault matrix (issue 10): ``cxsmtp send`` through the real CLI against real
loopback servers under faults; ``make test-slow`` prints its counts.

A package (unlike the other test folders) so that its conftest.py and helpers are
imported as ``faults.*`` and never shadow the top-level ``conftest`` module that
other tests import by name.
"""
