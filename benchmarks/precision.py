"""The frozen model in float32, bfloat16 and int8 (`model.precision`), side by side.

    python benchmarks/precision.py --model models/smollm2 --batch 64 --length 256
    python benchmarks/precision.py --model models/smollm2 --batch 64 --train --preset paper_smollm2

Model alone: `HFBase.step` (the rollout's own decoding: preallocated KV cache, prefix
attention, log β and features) over the same positions, one repetition of each precision in
turn after a warm-up of each, so that each ratio to float32 compares runs a moment apart:
median tokens/s of every precision, and the median and range of the per-repetition ratios.
Also how far each precision moves β: the largest |log β − log β_float32| over the rows and
positions of the first repetition (the KL stays exact against the model as run; β itself
is what rounding changes). With --train: whole PPO updates of `--preset` on the same model
(`benchmarks/training.py`'s `training`, a fresh process per precision), agent steps/s.
Medians over `--reps` repetitions. Nothing else heavy should run meanwhile.
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rollout import model_args, parse_model_args, tiny_model  # noqa: E402

PRECISIONS = ("float32", "bfloat16", "int8")


def decode(base, batch: int, length: int, seed: int) -> tuple[float, torch.Tensor]:
    """Tokens/s of `length` steps of `base` over `batch` rows fed fixed random tokens, and the
    (batch, ≤ 16, V) log β of the first 16 steps."""
    g = torch.Generator().manual_seed(seed)
    vocab = base.vocab_size
    prompt = torch.randint(vocab, (1, 8), generator=g).expand(batch, -1)
    feed = torch.randint(vocab, (length, batch), generator=g)
    base.reset(prompt, capacity=8 + length)
    logps = []
    t0 = time.perf_counter()
    for t in range(length):
        logp = base.step(feed[t]).logp
        if t < 16:
            logps.append(logp.clone())
    wall = time.perf_counter() - t0
    return batch * length / wall, torch.stack(logps, 1)


def model_alone(model_dir: Path, precisions, batch: int, length: int, reps: int) -> dict:
    from klbudget.base.hf import HFBase

    bases = {p: HFBase(model_dir, precision=p) for p in precisions}
    for base in bases.values():  # warm-up
        decode(base, batch, min(length, 16), seed=0)
    rates: dict[str, list[float]] = {p: [] for p in precisions}
    moved: dict[str, float] = {}
    for rep in range(reps):
        ref = None
        for p, base in bases.items():
            rate, logp = decode(base, batch, length, seed=rep + 1)
            rates[p].append(rate)
            if rep == 0:
                ref = logp if p == "float32" else ref
                moved[p] = float((logp - ref).abs().max()) if ref is not None else float("nan")
    return {"rates": rates, "moved": moved}


def train_rate(model_dir: Path, precision: str, batch: int, length: int, reps: int, name: str):
    import training

    orig = training._config

    def with_precision(*args):
        from klbudget.config import apply_overrides

        return apply_overrides(orig(*args), [f"model.precision={precision}"]).validate()

    training._config = with_precision
    return training.training(model_dir, batch, length, reps, 8192, "embed", name)


def main() -> None:
    p = model_args(__doc__, 256)
    p.add_argument("--reps", type=int, default=3, help="timed repetitions after a warm-up")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated")
    p.add_argument("--train", action="store_true", help="also time whole PPO updates")
    p.add_argument("--preset", default="paper_smollm2", help="the preset --train runs")
    args = parse_model_args(p)
    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    if unknown := set(precisions) - set(PRECISIONS):
        p.error(f"--precisions: unknown {sorted(unknown)}; expected {', '.join(PRECISIONS)}")
    if "float32" not in precisions:
        p.error("--precisions must include float32 (the reference)")
    precisions = ["float32"] + [x for x in precisions if x != "float32"]
    if args.reps < 1:
        p.error("--reps must be >= 1")
    model = Path(args.model) if args.model else tiny_model(args.tiny, Path("/tmp/precision-m"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    for batch in args.batch:
        res = model_alone(model, precisions, batch, args.length, args.reps)
        ref = res["rates"]["float32"]
        print(f"\nmodel alone, batch {batch}, {args.length} positions, {args.reps} reps:")
        print(f"{'precision':>10} {'tok/s':>8} {'ratio':>6} {'range':>12} {'max |Δ log β|':>14}")
        for prec in precisions:
            rates = res["rates"][prec]
            ratios = [a / b for a, b in zip(rates, ref, strict=True)]
            rate, ratio = statistics.median(rates), statistics.median(ratios)
            print(f"{prec:>10} {rate:>8.0f} {ratio:>6.2f} {min(ratios):>5.2f}-{max(ratios):<5.2f} "
                  f"{res['moved'][prec]:>14.4f}")  # fmt: skip
        if args.train:
            ctx = multiprocessing.get_context("spawn")
            print(f"\ntraining ({args.preset}, embed head), batch {batch}: agent steps/s")
            rates = {}
            for prec in precisions:
                with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    rates[prec] = pool.submit(train_rate, model, prec, batch, args.length,
                                              args.reps, args.preset).result()  # fmt: skip
                r = rates[prec]
                print(f"{prec:>10} {r['agent']:>8.1f} agent steps/s, {r['total']:>6.0f} tok/s, "
                      f"ratio {r['agent'] / rates['float32']['agent']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
