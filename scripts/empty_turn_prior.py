"""What an empty teacher turn costs under a base model, before any RL.

For held-out demonstrations of a world, make the first n−1 teacher turns empty (the
student's replies stay as τ's student wrote them) and measure −log β of an empty n-th
teacher turn (the hand-over straight after the teacher tag), teacher-forced. This is the
KL an agent pays (in realized nats) to write that turn with certainty; the paper's effect
needs it to be affordable within the budget and to fall with n (in-context learning).

    python3 scripts/empty_turn_prior.py --model models/imitator-<hash> --world runs/demo/world
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from klbudget.base.hf import HFBase, ModelLoadError
from klbudget.envs.format import ChatFormat
from klbudget.world.corpus import load_split, record_turns
from klbudget.world.tokenizer import encode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="base model folder")
    p.add_argument("--world", required=True, help="world folder (its held-out split is used)")
    p.add_argument("--transcripts", type=int, default=30)
    p.add_argument("--max-n", type=int, default=5)
    args = p.parse_args()
    try:
        base = HFBase(args.model)
        records = load_split(args.world, "heldout")[: args.transcripts]
    except (ModelLoadError, OSError) as err:
        print(f"empty_turn_prior: {err}", file=sys.stderr)
        return 2
    fmt, tok = ChatFormat(), base.tokenizer
    costs: dict[int, list[float]] = {}
    for rec in records:
        turns = record_turns(rec)
        for n in range(1, args.max_n + 1):
            if 2 * n - 1 > len(turns):
                break
            before = [
                (s, "" if s == "teacher" else c) for s, c in turns[: 2 * (n - 1)]
            ]  # n − 1 empty teacher turns and the student's replies
            ctx = encode(tok, fmt.render(before))
            full = encode(tok, fmt.render(before) + fmt.to_student)
            if full[: len(ctx)] != ctx:  # the hand-over merged with the tag: skip
                continue
            logp = base.score(torch.tensor([full]))[0, len(ctx) - 1 :]
            costs.setdefault(n, []).append(-float(logp.sum()))
    print(f"−log β(empty n-th teacher turn), nats, over {len(records)} held-out transcripts")
    print(f"{'n':>3} {'median':>8} {'mean':>8} {'count':>6}")
    for n, c in sorted(costs.items()):
        print(f"{n:>3} {statistics.median(c):>8.2f} {statistics.mean(c):>8.2f} {len(c):>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
