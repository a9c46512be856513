"""The evidence and verdict layer, below jobs/ and audit/ (which both use it, neither the other):

- outcome.py: ClaimOutcome, the record of one claim's evidence and verdict, with its JSON form;
- gather.py: the evidence on a chunk of a claim's instances (certify and check, search, confirm);
- recheck.py: stored evidence checked again where it is read (certificates, replays);
- verdict.py: the verdict rules, from merged evidence to a verdict and its reason.
"""

from .gather import audit_chunk, certify_one, search_config
from .outcome import SOLVED_MAX_ERROR, TOLERANCE, VERDICTS, ClaimOutcome
from .recheck import instance_digest, recheck_certificates, recheck_replays
from .verdict import decide

__all__ = ["ClaimOutcome", "SOLVED_MAX_ERROR", "TOLERANCE", "VERDICTS", "audit_chunk", "certify_one", "decide",
           "instance_digest", "recheck_certificates", "recheck_replays", "search_config"]
