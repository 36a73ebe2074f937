"""Relation families, defined from the shipped data alone, so that "the weights chose the right relation" can be
judged without penalising a sibling that answers the same way.

The bank holds siblings and converses on purpose (three kinds of opposite; category → member and collection →
member), and the combiner's objective, ``log p(D)``, does not care which of two relations that give the same
answer gets the weight. So relation ``j`` joins relation ``i``'s family when, on the combiner's *training*
analogies of relation ``i``, ``j``'s vector explains the source pair better than ``i``'s own (a higher
``log p(B | "Q: A\\nA:", vⱼ)``) on at least ``threshold`` of ``i``'s distinct source pairs. The families are computed
by the fit (``make vectors``) and stored with the combiner, before anything is measured on an evaluation set.
"""

from __future__ import annotations

from collections import defaultdict

from torch import Tensor

# j joins i's family when it outranks i on at least this share of i's training source pairs.
FAMILY_THRESHOLD = 0.3


def relation_families(names: list[str], relations: list[str], sources: list[tuple[str, str]], scores: Tensor,
                      threshold: float = FAMILY_THRESHOLD) -> dict[str, list[str]]:
    """``relation → its family`` (itself first, then the others by name). ``relations[n]``, ``sources[n]`` and
    ``scores[n]`` (``[K]`` over ``names``) describe the n-th training analogy; a source pair used by several
    analogies counts once."""
    rows: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
    for row, (relation, source) in enumerate(zip(relations, sources, strict=True)):
        rows[relation].setdefault(source, row)
    families: dict[str, list[str]] = {}
    for own_index, own in enumerate(names):
        picked = list(rows.get(own, {}).values())
        members = [own]
        if picked:
            own_scores = scores[picked, own_index]
            outranks = (scores[picked] > own_scores[:, None]).float().mean(dim=0)
            members += sorted(names[j] for j in range(len(names))
                              if j != own_index and float(outranks[j]) >= threshold)
        families[own] = members
    return families
