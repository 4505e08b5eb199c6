"""The one acceptance rule: which candidates of a reply become examples, and why the others do not.

Pure functions, no database, no network, no embedder: the engine hands in the parsed
candidates and the run's state, and gets decisions back.

Two steps, because similarity needs embeddings of the candidates that survive the cheap checks:

1. ``screen``: parse errors, field validation against the task format, exact duplicates (of
   the run and of earlier candidates of the same reply);
   and the user's checkable constraints;
1b. ``apply_verdicts`` (with ``--verify``): the verifier's verdicts, which keep, relabel or
   dispute each surviving candidate;
2. ``judge``: near-duplicates and novelty from the similarities the engine computed, the
   target (a reply may give more than the run still needs), and each candidate's share of
   the call's cost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, AbstractSet, Sequence

from treegen.parsing import Candidate
from treegen.schema import answer_to_label
from treegen.task import Example, InvalidExample, TaskFormat, dedup_key, example_from_dict

if TYPE_CHECKING:
    from treegen.constraints import Constraint
    from treegen.verify import Verdict

# Rejection reasons that acceptance itself gives (parsing and validation add their own).
DUPLICATE = "duplicate"
NEAR_DUPLICATE = "near-duplicate"
OVER_TARGET = "over-target"
NO_EXAMPLES = "no-examples-in-reply"
LABEL_DISPUTED = "label-disputed"
UNVERIFIED = "unverified"


@dataclass(frozen=True)
class Screened:
    """A candidate after the cheap checks: ``reason`` None means it is still in the running."""

    candidate: Candidate
    example: Example | None
    reason: str | None
    key: str | None = None  # the dedup key of a valid example (kept on exact duplicates too)
    verdict: str | None = None  # JSON: the verifier's votes and outcome (with --verify)


@dataclass(frozen=True)
class Decision:
    example: Example | None
    accepted: bool
    reason: str | None
    raw: str | None  # what the model wrote, kept for rejected candidates
    cost_share_micro: int
    novelty: float | None
    key: str | None = None  # the dedup key, computed once in screen
    verdict: str | None = None


@dataclass(frozen=True)
class JudgeContext:
    """The run's state that acceptance depends on."""

    open_slots: int | None  # how many more examples the target allows (None: no target)
    near_dup: float | None  # cosine threshold, None when off
    cost_micro: int  # the call's reconciled cost, split over its candidates


def split_cost(total: int, n: int) -> list[int]:
    """Split an integer cost over n parts; the remainder goes to the first ones."""
    if n <= 0:
        return []
    base, rem = divmod(total, n)
    return [base + (1 if i < rem else 0) for i in range(n)]


def screen(candidates: Sequence[Candidate], fmt: TaskFormat, seen_keys: AbstractSet[str],
           constraints: Sequence["Constraint"] = ()) -> list[Screened]:
    """Parse errors, invalid fields, broken constraints and exact duplicates, in reply order."""
    out: list[Screened] = []
    batch_keys: set[str] = set()
    for cand in candidates:
        if cand.obj is None:
            out.append(Screened(cand, None, cand.error or "invalid-json"))
            continue
        try:
            ex = example_from_dict(answer_to_label(cand.obj) if fmt.kind == "mcqa" else cand.obj, fmt)
        except InvalidExample as exc:
            out.append(Screened(cand, None, exc.reason))
            continue
        if constraints:
            from treegen.constraints import violated

            broken = violated(ex, constraints)
            if broken is not None:
                out.append(Screened(cand, ex, broken))
                continue
        key = dedup_key(ex)
        if key in seen_keys or key in batch_keys:
            out.append(Screened(cand, ex, DUPLICATE, key))  # the key goes into its node: not computed twice
            continue
        batch_keys.add(key)
        out.append(Screened(cand, ex, None, key))
    return out


def rescreen(screened: Sequence[Screened], seen_keys: AbstractSet[str]) -> list[Screened]:
    """Exact duplicates again, against examples accepted since ``screen`` ran (cheap: the keys
    are kept)."""
    return [Screened(s.candidate, s.example, DUPLICATE, s.key, s.verdict) if s.reason is None and s.key in seen_keys
            else s for s in screened]


def apply_verdicts(screened: Sequence[Screened], alive: Sequence[int], verdicts: Sequence["Verdict"],
                   seen_keys: AbstractSet[str]) -> list[Screened]:
    """The verifier's verdicts on the candidates still in the running (``alive``, in order):
    kept as they are, relabelled (a new label, so a new dedup key, checked again), or
    rejected as disputed or unverified. The votes go with each candidate into its node."""
    out = list(screened)
    keys = {s.key for i, s in enumerate(screened) if s.reason is None and i not in alive}
    for i, v in zip(alive, verdicts):
        s = out[i]
        verdict = json.dumps({"votes": list(v.votes), "outcome": v.outcome}, ensure_ascii=False)
        if not v.keep or s.example is None:
            reason = UNVERIFIED if v.outcome == "unverified" else LABEL_DISPUTED
            out[i] = Screened(s.candidate, s.example, reason, s.key, verdict)
            continue
        ex, key = s.example, s.key
        if v.label != ex.label:
            ex = replace(ex, label=v.label)
            key = dedup_key(ex)
            if key in seen_keys or key in keys:
                out[i] = Screened(s.candidate, ex, DUPLICATE, key, verdict)
                continue
        keys.add(key)
        out[i] = Screened(s.candidate, ex, None, key, verdict)
    return out


def judge(screened: Sequence[Screened], similarities: dict[int, float], ctx: JudgeContext) -> list[Decision]:
    """Final decisions, in reply order.

    ``similarities`` maps the index of a screened candidate still in the running to its
    highest cosine similarity to anything accepted before it (the engine includes earlier
    candidates of the same reply); absent when the run keeps no similarity index.
    """
    shares = split_cost(ctx.cost_micro, len(screened))
    accepted = 0
    out: list[Decision] = []
    for i, s in enumerate(screened):
        reason = s.reason
        novelty = None
        if reason is None and i in similarities:
            novelty = 1.0 - similarities[i]
            if ctx.near_dup is not None and similarities[i] >= ctx.near_dup:
                reason = NEAR_DUPLICATE
        if reason is None and ctx.open_slots is not None and accepted >= ctx.open_slots:
            reason = OVER_TARGET  # valid, but the reply gave more than the target allows
        ok = reason is None
        accepted += ok
        out.append(Decision(s.example, ok, reason, None if ok else s.candidate.raw, shares[i], novelty, s.key,
                            s.verdict))
    return out
