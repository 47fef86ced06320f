"""Rollout throughput: how much of a rollout is the base model's forward pass?

    python benchmarks/rollout.py --tiny 1m --batch 16 64
    python benchmarks/rollout.py --model models/smollm2 --batch 16 --length 160

Prints, per batch size: agent tokens/s, total tokens/s (all conversations, prompt
excluded), the share of rollout wall time inside the base model's forward passes (the
rest is the actor head, the fixed-KL mixture solve, sampling, tag detection, reward and
book-keeping), and peak RSS of the rollout; then the same model decoding alone over the
same positions (batched, preallocated KV cache read up to the current position, as the
rollout does: forward only, and forward + one inverse-CDF draw per row), and the model
alone with its stock attention over the whole masked cache. The model alone runs in a
second process, one repetition after each rollout episode while the rollout waits, so that
each ratio compares an episode with the model alone on the same machine a moment later:
the ratios printed are the medians of those pairs, with their range.
`--against FILE` runs instead episodes with this solver and with another version's
(`fixed_kl_mixture` of FILE, e.g. `git show 2aeba38:klbudget/core/mixture.py > /tmp/old.py`)
in turn, in one process with the same seeds, and prints each one's total tokens/s and whether
the two played the same episodes. `--count-calls` prints instead the torch calls per step
outside the base model's step (`torch.profiler` over one episode after a warm-up; each call
counted once with what it calls inside): the rollout's own overhead in calls, whatever the
machine's speed.
`--tiny 1m|10m` builds a random GPT-2-architecture model (vocab 4096; 2×128 or 8×320)
with a BPE trained on chitchat-dataset text, in a temporary folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

import klbudget.agent.policy as policy
from klbudget.agent.actors import make_actor
from klbudget.agent.policy import Critic
from klbudget.agent.rollout import run_episode
from klbudget.base.hf import HFBase
from klbudget.envs.chat import ChatEnv
from klbudget.envs.format import ChatFormat
from klbudget.rewards.sentiment import VaderSentiment

TINY = {"1m": dict(n_layer=2, n_embd=128, n_head=4), "10m": dict(n_layer=8, n_embd=320, n_head=8)}


def tiny_model(size: str, out: Path, tokenizer_from: str | None = None) -> Path:
    from chitchat_dataset import MessageDataset

    from klbudget.base.tiny import make_tiny_model

    if tokenizer_from:  # an existing vocabulary (e.g. SmolLM2's 49,152 tokens)
        return make_tiny_model(out, [], tokenizer_from=tokenizer_from, **TINY[size])
    texts = [m for _, m in zip(range(60_000), MessageDataset(), strict=False)]
    texts = [t if isinstance(t, str) else str(t) for t in texts]
    return make_tiny_model(out, texts, vocab_size=4096, **TINY[size])


BASE_LABEL = "base model step"


class TimedBase:
    """Wraps a base policy and accumulates the wall time of its forward passes."""

    def __init__(self, base: HFBase) -> None:
        self.base = base
        self.seconds = 0.0

    def __getattr__(self, name):
        return getattr(self.base, name)

    def _timed(self, fn, *args, **kwargs):
        t = time.perf_counter()
        with torch.profiler.record_function(BASE_LABEL):
            out = fn(*args, **kwargs)
        self.seconds += time.perf_counter() - t
        return out

    def reset(self, ids, capacity=None):
        return self._timed(self.base.reset, ids, capacity=capacity)

    def step(self, tokens):
        return self._timed(self.base.step, tokens)


def _setup(model_dir: Path, batch: int, length: int, head: str):
    """The benchmark's base (timed), chat environment, budget agent and generator."""
    base = TimedBase(HFBase(model_dir))
    chat = ChatFormat(prompt="Student: Hi! Can you help me?\n\nTeacher:")
    env = ChatEnv(base, base.tokenizer, VaderSentiment(), n_envs=batch, length=length, chat=chat)
    d = base.feature_dim + 2
    torch.manual_seed(0)
    actor = make_actor(d, base, head)
    with torch.no_grad():  # a trained-looking head, so the mixture solve does real work
        (actor.z.weight if head == "full" else actor.proj.weight).normal_(0, 0.05)
    return base, env, actor, Critic(d, 256), torch.Generator().manual_seed(0)


def bench(
    model_dir: Path,
    batch: int,
    length: int,
    episodes: int,
    budget: float,
    head: str = "full",
    between: Callable[[], None] | None = None,
) -> dict:
    """Rollout rates, one entry per timed episode (after a warm-up); `between` runs after
    each timed episode (the model alone, so that the two alternate on the same machine)."""
    base, env, actor, critic, g = _setup(model_dir, batch, length, head)
    run_episode(env, actor, critic, budget=budget, mode="realized", budget_scale=budget,
                generator=g, seed=0)  # fmt: skip  # warm-up
    shares, agent_rates, total_rates, peak = [], [], [], 0.0
    for ep_i in range(episodes):
        base.seconds = 0.0
        t = time.perf_counter()
        ep = run_episode(env, actor, critic, budget=budget, mode="realized",
                         budget_scale=budget, generator=g, seed=ep_i + 1)  # fmt: skip
        wall = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        shares.append(base.seconds / wall)
        agent_rates.append(ep.agent_steps / wall)
        total_rates.append(batch * (length - len(env.prompt_ids)) / wall)
        if between is not None:
            between()
    return {
        "agent_tok_s": agent_rates,
        "total_tok_s": total_rates,
        "forward_share": statistics.median(shares),
        "peak_rss_mb": peak,
        "params_m": sum(p.numel() for p in base.model.parameters()) / 1e6,
    }


def calls_per_step(model_dir: Path, batch: int, length: int, budget: float, head: str) -> dict:
    """Torch calls per step outside the base model's step, counted by `torch.profiler` over
    one episode after a warm-up: the calls made by the rollout's own code (the actor, the
    mixture, sampling, the environment), each counted once with what it calls inside."""
    from torch.profiler import ProfilerActivity, profile

    base, env, actor, critic, g = _setup(model_dir, batch, length, head)

    def episode(seed: int):
        return run_episode(env, actor, critic, budget=budget, mode="realized",
                           budget_scale=budget, generator=g, seed=seed)  # fmt: skip

    episode(0)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        episode(1)
    top = [e for e in prof.events() if e.cpu_parent is None]
    steps = sum(e.name == BASE_LABEL for e in top)
    outside = [e for e in top if e.name != BASE_LABEL]
    return {"steps": steps, "calls": len(outside) / max(steps, 1)}


def load_solver(path: str):
    """`fixed_kl_mixture` of another version of klbudget/core/mixture.py, or None."""
    spec = importlib.util.spec_from_file_location("mixture_against", path)
    if spec is None or spec.loader is None or not Path(path).is_file():
        return None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit):  # noqa: BLE001 - a file that fails to import: not a solver
        return None
    return getattr(module, "fixed_kl_mixture", None)


def against(
    model_dir: Path, batch: int, length: int, episodes: int, budget: float, head: str, other
) -> dict[str, list]:
    """Total tokens/s of episodes played with this solver and with `other`, in turn, each
    pair with the same seed, and what each episode played (agent steps, KL, return)."""
    base, env, actor, critic, _ = _setup(model_dir, batch, length, head)
    solvers = {"this": policy.fixed_kl_mixture, "against": other}
    out: dict[str, list] = {f"{n}_{k}": [] for n in solvers for k in ("tok_s", "played")}
    try:
        for i in range(episodes + 1):  # the first pair is a warm-up
            for name, solve in solvers.items():
                policy.fixed_kl_mixture = solve
                t = time.perf_counter()
                ep = run_episode(env, actor, critic, budget=budget, mode="realized",
                                 budget_scale=budget, generator=torch.Generator().manual_seed(i),
                                 seed=i)  # fmt: skip
                wall = time.perf_counter() - t
                if i:
                    out[f"{name}_tok_s"].append(batch * (length - len(env.prompt_ids)) / wall)
                    out[f"{name}_played"].append(
                        (ep.agent_steps, ep.kl.tolist(), ep.returns.tolist())
                    )
    finally:
        policy.fixed_kl_mixture = solvers["this"]
    return out


class ModelAlone:
    """Tokens/s of plain batched incremental decoding: forward only, and forward + sampling.

    Attention reads the filled part of the cache (`klbudget.base.hf.prefix_attention`, as
    the rollout does); the "masked_" entries are the model's stock attention over the whole
    preallocated cache behind a mask (the library's default for a static cache). One `rep`
    runs the four once each, so that all see the same machine."""

    def __init__(self, model_dir: Path, batch: int, length: int) -> None:
        from klbudget.base.hf import load_local, use_prefix_attention
        from klbudget.envs.format import DEFAULT_PROMPT

        self.models = {"": load_local(model_dir)[0], "masked_": load_local(model_dir)[0]}
        use_prefix_attention(self.models[""])
        tok = load_local(model_dir)[1]
        self.prompt = torch.tensor([tok(DEFAULT_PROMPT)["input_ids"]] * batch)
        self.length = length
        self.g = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def rep(self) -> dict[str, float]:
        from transformers import StaticCache

        from klbudget.core.sampling import sample_categorical

        batch, p = self.prompt.shape
        rates = {}
        for sample in (False, True):
            for prefix, model in self.models.items():
                cache = StaticCache(config=model.config, max_cache_len=self.length)
                t0 = time.perf_counter()
                o = model(input_ids=self.prompt, past_key_values=cache, use_cache=True,
                          cache_position=torch.arange(p))  # fmt: skip
                nxt = torch.zeros(batch, dtype=torch.long)
                for pos in range(p, self.length):
                    logits = o.logits[:, -1].float()
                    if sample:
                        nxt = sample_categorical(torch.log_softmax(logits, -1), self.g)
                    o = model(input_ids=nxt[:, None], past_key_values=cache, use_cache=True,
                              cache_position=torch.tensor([pos]))  # fmt: skip
                key = prefix + ("sample" if sample else "forward")
                rates[key] = batch * (self.length - p) / (time.perf_counter() - t0)
        return rates


def model_alone(model_dir: Path, batch: int, length: int, reps: int) -> dict[str, float]:
    """Medians of `reps` timed repetitions of `ModelAlone` after a warm-up."""
    alone = ModelAlone(model_dir, batch, length)
    alone.rep()
    runs = [alone.rep() for _ in range(reps)]
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


_ALONE: ModelAlone | None = None


def _alone_start(model_dir: Path, batch: int, length: int, threads: int) -> None:
    global _ALONE
    if threads:
        torch.set_num_threads(threads)
    _ALONE = ModelAlone(model_dir, batch, length)
    _ALONE.rep()  # warm-up


def _alone_rep() -> dict[str, float]:
    assert _ALONE is not None
    return _ALONE.rep()


def paired(
    model_dir: Path,
    batch: int,
    length: int,
    episodes: int,
    budget: float,
    head: str,
    threads: int = 0,
) -> tuple[dict, list[dict[str, float]]]:
    """The rollout's episodes and the model alone's repetitions, alternating one for one:
    the model alone runs in a second process (its own memory, so the rollout's peak RSS is
    its own) while this one waits."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=_alone_start,
                             initargs=(model_dir, batch, length, threads)) as pool:  # fmt: skip
        pool.submit(int).result()  # the model alone is loaded and warm before the rollout
        alone: list[dict[str, float]] = []
        r = bench(model_dir, batch, length, episodes, budget, head,
                  between=lambda: alone.append(pool.submit(_alone_rep).result()))  # fmt: skip
    return r, alone


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def model_args(doc: str, length: int) -> argparse.ArgumentParser:
    """A parser with the model source (--model folder or --tiny size), --batch and --length."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="local Hugging Face model folder")
    src.add_argument("--tiny", choices=sorted(TINY), help="build a random model of this size")
    p.add_argument(
        "--tokenizer-from",
        default=None,
        help="with --tiny: the tokenizer (and vocabulary) of this model folder",
    )
    p.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    p.add_argument("--length", type=int, default=length)
    return p


def parse_model_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse, and refuse with a one-line usage error (exit 2) before any work: a model folder
    without config.json, a tokenizer folder without tokenizer files, a batch or length below 1."""
    args = p.parse_args()
    if args.model is not None and not (Path(args.model) / "config.json").is_file():
        p.error(f"--model {args.model}: not a model folder (no config.json)")
    tok = args.tokenizer_from
    if tok is not None and not any((Path(tok) / f).is_file() for f in TOKENIZER_FILES):
        p.error(f"--tokenizer-from {tok}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    if min(args.batch) < 1 or args.length < 1:
        p.error("--batch and --length must be >= 1")
    return args


def main() -> None:
    p = model_args(__doc__, 128)
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--budget", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--head", choices=("full", "embed"), default="full", help="actor head")
    p.add_argument(
        "--count-calls",
        action="store_true",
        help="instead: torch calls per step outside the model (torch.profiler, one episode)",
    )
    p.add_argument(
        "--against",
        metavar="FILE",
        help="instead: episodes with this solver and with FILE's (another core/mixture.py)",
    )
    args = parse_model_args(p)
    if args.against is not None and args.count_calls:
        p.error("--against and --count-calls are two different runs: give one")
    other = None
    if args.against is not None and (other := load_solver(args.against)) is None:
        p.error(f"--against {args.against}: not a Python file defining fixed_kl_mixture")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = (
            Path(args.model)
            if args.model
            else tiny_model(args.tiny, Path(tmp) / "m", args.tokenizer_from)
        )
        name = args.model or f"random {args.tiny}"
        for b in args.batch:
            if args.count_calls:
                c = calls_per_step(model, b, args.length, args.budget, args.head)
                print(f"{name} ({args.head} head) batch {b:3d}: {c['calls']:.0f} torch calls "
                      f"per step outside the base model's step ({c['steps']} steps)")  # fmt: skip
                continue
            if other is not None:
                ab = against(model, b, args.length, args.episodes, args.budget, args.head, other)
                this, them = ab["this_tok_s"], ab["against_tok_s"]
                each = [y / x for x, y in zip(this, them, strict=True)]
                same = "yes" if ab["this_played"] == ab["against_played"] else "no"
                print(f"{name} ({args.head} head) batch {b:3d}: total "
                      f"{statistics.median(this):7.0f} tok/s, against {args.against} "
                      f"{statistics.median(them):7.0f} tok/s (medians of {len(this)}); "
                      f"against / this {statistics.median(each):.2f} "
                      f"({min(each):.2f}-{max(each):.2f}); the same episodes: {same}",
                      flush=True)  # fmt: skip
                continue
            r, alone = paired(model, b, args.length, args.episodes, args.budget, args.head,
                              args.threads)  # fmt: skip
            agent, total = r["agent_tok_s"], r["total_tok_s"]
            med = {key: statistics.median(a[key] for a in alone) for key in alone[0]}
            fwd = [a["forward"] for a in alone]

            def ratio(rates: list[float], fwd: list[float] = fwd) -> str:
                each = [x / f for x, f in zip(rates, fwd, strict=True)]
                spread = f" ({min(each):.2f}-{max(each):.2f})" if len(each) > 1 else ""
                return f"{statistics.median(each):.2f}{spread}"

            print(
                f"{name} ({r['params_m']:.1f}M params, {args.head} head) batch {b:3d}: "
                f"agent {statistics.median(agent):7.0f} tok/s  "
                f"total {statistics.median(total):7.0f} tok/s  "
                f"in model forward {100 * r['forward_share']:5.1f}%  "
                f"peak RSS {r['peak_rss_mb']:.0f} MB\n"
                f"    model alone: forward {med['forward']:7.0f} tok/s, with a draw "
                f"{med['sample']:7.0f} tok/s; agent / forward {ratio(agent)}, "
                f"total / forward {ratio(total)}\n"
                f"    model alone, stock attention over the masked cache: forward "
                f"{med['masked_forward']:7.0f} tok/s, "
                f"with a draw {med['masked_sample']:7.0f} tok/s",
                flush=True,
            )


if __name__ == "__main__":
    main()
