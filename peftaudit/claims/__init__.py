"""Registered claims: the Claim type, the registry, and the built-in claims."""

from .base import (Claim, MethodRun, claim, claim_ids, expand_claims, get_claim, register_claim, registered_claim,
                   unregister_claim)

__all__ = ["Claim", "MethodRun", "claim", "claim_ids", "expand_claims", "get_claim", "register_claim", "registered_claim",
           "unregister_claim"]
