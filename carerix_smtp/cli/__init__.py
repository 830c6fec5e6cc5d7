"""The Typer command-line layer: one module per command group, thin commands.

Each command parses its options, calls one core function from the packages below
(config, send, probe, sink, spool, limits), renders the result and returns an exit
code.  Only this package imports typer and rich; heavy modules are imported inside
the commands, so ``cxsmtp --help`` stays fast.
"""
