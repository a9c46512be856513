"""Exit codes: one table for every command (README, "Commands")."""

OK = 0
FAILED = 1          # refuted or NOT-SHOWN (audit), not certified, not memorized, invalid, a re-check failed
BAD_INPUT = 2       # bad usage or input, refused before any work
INTERNAL = 3        # an internal error (one line, traceback in a log), or anything ended in ERROR (audit, card)
UNKNOWN = 4         # certify: inconclusive, or a budget (--timeout, --max-memory) spent
INTERRUPTED = 130   # Ctrl-C or SIGTERM; nothing partial is left
CERTIFY = {"certified": OK, "not-certified": FAILED, "not-applicable": INTERNAL, "unknown": UNKNOWN}
