"""The claims' own prompt attacks as a study (issue 27's upper side): L1 and L1+ through the exact
reduction of prompts of any length, L2 through one-token prompts at every scale
(search/reduced_prompt.py). Each prompt found is replayed in interval arithmetic; a replayed
error below a certified floor is a violation (the claim's ERROR), and the report's sandwich reads
the rows as one more falsifier: a study of its own ("prompt-attack", L1, L1+), or "attack_rows"
beside another study's rows (L2)."""

from __future__ import annotations

from typing import Callable

from peftaudit.settings import Profile


def attack_rows(instances, certificates: dict, seed: int, attack: Callable, label: str,
                log=lambda s: None) -> dict:
    """{"attack_rows": per instance {instance, floor, attack, length, label, ratio}, "violations": [...]}"""
    from peftaudit.models.methods import get_method
    from peftaudit.search.engine import rigorous_replay

    prompt = get_method("prompt")
    rows, violations = [], []
    for i, inst in enumerate(instances):
        cert = certificates.get(i, {})
        floor = cert.get("margin") if cert.get("status") == "certified" else None
        found = attack(inst, cert, [seed, 27, i])
        if found is None:
            continue
        upper = rigorous_replay(prompt, inst, {"prompt": found.prompt})[1]
        if floor is not None and upper < floor:
            violations.append(f"instance {i}: the {label}'s prompt (length {len(found.prompt)}) reaches {upper:.3g}, "
                              f"below the certified floor {floor:.3g}")
        log(f"instance {i}: {label} {upper:.4g} (length {len(found.prompt)}, from a {found.start} start), floor {floor}")
        rows.append({"instance": i, "floor": floor, "attack": upper, "length": len(found.prompt),
                     "label": f"prompt, {label} (length {len(found.prompt)})",
                     "ratio": None if floor is None or upper <= 0 else floor / upper})
    return {"attack_rows": rows, "violations": violations}


def reduced_attack_study(instances, certificates: dict, profile: Profile, seed: int, log=lambda s: None) -> dict:
    """L1, L1+: prompts of any length reduced to (v, H), started also from the relaxation's point."""
    from peftaudit.search.reduced_prompt import attack

    out = attack_rows(instances, certificates, seed,
                      lambda inst, cert, s: attack(inst, delta=cert.get("best_error"), seed=s), "reduced attack", log)
    return {"kind": "prompt-attack", "rows": out["attack_rows"], "violations": out["violations"]}


def one_token_study(instances, certificates: dict, profile: Profile, seed: int, log=lambda s: None) -> dict:
    """L2 (N = 2): its falsifier's class, one-token prompts, searched at every scale; beside the
    value-rank study that the parameter table reads."""
    from peftaudit.search.reduced_prompt import one_token_attack

    from .lv import value_rank_study

    ranks = value_rank_study(instances, certificates, profile, seed, log)
    out = attack_rows(instances, certificates, seed, lambda inst, cert, s: one_token_attack(inst, seed=s),
                      "one-token attack", log)
    return {**ranks, "attack_rows": out["attack_rows"], "violations": ranks["violations"] + out["violations"]}
