"""What the n-th empty teacher turn costs under a base policy, before any RL (docs/design.md, "The
world").

The diagnostic of the in-context discount. In the chat environment, after ``first_tau``
teacher turns written by τ (a world is needed then), the teacher writes only empty turns
(the separator straight after the teacher tag; the environment then writes the student's
tag), while the environment writes the student's replies by sampling the base at its
student temperature: the context an agent that goes silent meets. The cost of the n-th
empty turn is

    c_n = −Σ_{y ∈ n-th empty turn} log base(y | x_{<y})

the KL, in realized nats, that an agent pays to write that turn with certainty. The paper's
effect needs c_1 affordable within the budget and c_n falling with n. Under a pessimistic
base the cost is −log ν_α, whose leftover mass is help: silence stays expensive there unless
every plausible member discounts it. With an ensemble base every member is costed on the same
transcripts (whose student is member 0, as in training).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from klbudget.agent.policy import Actor, Critic
from klbudget.agent.rollout import run_episode
from klbudget.compose import build_env, chat_format
from klbudget.config import Config
from klbudget.evaluation import metrics as m
from klbudget.evaluation.records import parse_episode


@dataclass(frozen=True)
class PriorResult:
    """Costs of the n-th empty turn: ``costs[e, n-1]`` for episode e (NaN: not reached)."""

    costs: np.ndarray  # (episodes, turns) nats
    first_tau: int  # teacher turns τ wrote before the silence began
    ids: np.ndarray  # (episodes, T) the transcripts' token ids
    starts: np.ndarray  # (episodes, turns) position of each empty turn's first token, -1: none
    member_costs: np.ndarray | None = None  # (K, episodes, turns) under each ensemble member

    def member(self, k: int) -> PriorResult:
        """The same transcripts, costed under ensemble member k alone."""
        assert self.member_costs is not None
        return PriorResult(self.member_costs[k], self.first_tau, self.ids, self.starts)

    def summary(self) -> list[dict[str, float]]:
        """Per n: median, mean, quartiles and the number of episodes that reached it (NaN:
        not reached; +inf, a turn the base never writes, counts)."""
        rows = []
        for n in range(self.costs.shape[1]):
            c = self.costs[:, n]
            c = c[~np.isnan(c)]
            if not c.size:
                continue
            # No interpolation when a cost is +inf (inf − inf would make the quartiles NaN).
            method = "linear" if np.isfinite(c).all() else "inverted_cdf"
            q1, med, q3 = np.quantile(c, [0.25, 0.5, 0.75], method=method)
            rows.append({"n": n + 1, "median": float(med), "mean": float(c.mean()),
                         "q1": float(q1), "q3": float(q3), "count": int(c.size)})  # fmt: skip
        return rows

    def table(self, title: str) -> str:
        lines = [
            f"{title}: −log base of the n-th empty teacher turn, nats"
            + (f" (after {self.first_tau} turns of τ)" if self.first_tau else ""),
            f"{'n':>3} {'median':>8} {'mean':>8} {'q1':>7} {'q3':>7} {'count':>6}",
        ]
        for r in self.summary():
            lines.append(f"{r['n']:>3} {r['median']:>8.2f} {r['mean']:>8.2f} {r['q1']:>7.2f} "
                         f"{r['q3']:>7.2f} {r['count']:>6}")  # fmt: skip
        return "\n".join(lines)


@torch.no_grad()
def empty_turn_costs(
    cfg: Config,
    *,
    episodes: int = 16,
    turns: int = 6,
    first_tau: int = 0,
    world: Path | None = None,
    seed: int = 0,
) -> PriorResult:
    """Run ``episodes`` conversations of the silent teacher (module docstring) against the
    base that ``cfg`` describes (single, Bayes or pessimistic), at ``cfg.env.length``."""
    if episodes < 1 or turns < 1 or first_tau < 0:
        raise ValueError("episodes and turns must be >= 1 and first_tau >= 0")
    env = build_env(cfg, n_envs=episodes)
    oracle = None
    if first_tau:
        from klbudget.pipelines.evaluate import tau_oracle

        if world is None:
            raise ValueError("τ writes the first turns: a world folder is needed")
        oracle = tau_oracle(world, env.base, cfg)
    empty = env.text.encode(env.chat.separator)  # the environment then writes the tag

    def turn(i: int, k: int) -> tuple[list[int], bool]:
        if oracle is not None and k < first_tau:
            history = oracle.context(env, i)[0]
            return oracle.tm.sample_continuation(history, [], env.generator), False
        return empty, k - first_tau < turns

    members = getattr(env.base, "members", None)  # an ensemble: cost each member too
    forced = _force_teacher(env, seed, turn, costed_turns=turns, members=len(members or ()))
    costs = np.full((episodes, turns), np.nan)
    starts = np.full((episodes, turns), -1)
    per_member = None if members is None else np.full((len(members), episodes, turns), np.nan)
    for i in range(episodes):
        c = forced.costs[i][:turns]
        costs[i, : len(c)], starts[i, : len(c)] = c, forced.starts[i][:turns]
        if per_member is not None and c:
            per_member[:, i, : len(c)] = np.array(forced.members[i][:turns]).T
    ids = env.ids[:, : env.t].numpy().copy()
    return PriorResult(costs, first_tau, ids, starts, per_member)


@dataclass(frozen=True)
class _Forced:
    """What :func:`_force_teacher` recorded, per conversation."""

    costs: list[list[float]]  # −log base of each costed teacher turn (NaN: cut off at the end)
    starts: list[list[int]]  # position of each costed turn's first token
    members: list[list[list[float]]] | None  # each costed turn's cost under each member
    returns: np.ndarray  # (n_envs,) summed reward


def _force_teacher(
    env,
    seed: int,
    turn: Callable[[int, int], tuple[list[int], bool]],
    *,
    costed_turns: int | None = None,
    members: int = 0,
) -> _Forced:
    """Write every teacher turn of ``env``'s conversations with forced tokens while the
    environment writes the students' replies as in training: row i's k-th teacher turn is
    ``turn(i, k)`` = (its tokens, whether it is costed). A turn ends when its tokens run out or
    when the environment hands the turn over (after the separator). Stops at the end of the
    episode, or once every row has written ``costed_turns`` costed turns whole. ``members``:
    the number of an ensemble base's members, to cost each turn under each (``member_logp``)."""
    n = env.n_envs
    queue: list[list[int]] = [[] for _ in range(n)]
    begun = [0] * n
    costed = [False] * n  # whether the turn being written is costed
    costs: list[list[float]] = [[] for _ in range(n)]
    starts: list[list[int]] = [[] for _ in range(n)]
    per: list[list[list[float]]] | None = [[] for _ in range(n)] if members else None
    returns = np.zeros(n)
    obs, _ = env.reset(seed=seed)
    while env.t < env.length:
        actions = torch.zeros(n, dtype=torch.long)
        for i in torch.nonzero(obs["agent_turn"]).flatten().tolist():
            if not queue[i]:  # a new teacher turn begins
                tokens, costed[i] = turn(i, begun[i])
                queue[i], begun[i] = list(tokens), begun[i] + 1
                if costed[i]:
                    costs[i].append(0.0)
                    starts[i].append(env.t)
                    if per is not None:
                        per[i].append([0.0] * members)
            tok = queue[i].pop(0)
            actions[i] = tok
            if costed[i]:
                costs[i][-1] = _add_cost(costs[i][-1], -float(obs["base_logp"][i, tok]))
                if per is not None:  # the members' log-probs at this position
                    nll = (-env.base.member_logp[i, :, tok]).tolist()
                    per[i][-1] = [_add_cost(c, x) for c, x in zip(per[i][-1], nll, strict=True)]
        obs, reward, terminated, truncated, _ = env.step(actions)
        returns += reward.numpy()
        if env.t < env.length:  # at the end no one has the turn: an unfinished one stays so
            for i in torch.nonzero(~obs["agent_turn"]).flatten().tolist():
                queue[i] = []  # the turn is over: what is left is the environment's tag
        if bool((terminated | truncated).all()):
            break
        if costed_turns is not None and not any(queue) and min(map(len, costs)) >= costed_turns:
            break  # every costed turn is written, its last token included
    for i in range(n):
        if queue[i] and costed[i]:  # a turn cut off by the end of the episode is not whole
            costs[i][-1] = math.nan
            if per is not None:
                per[i][-1] = [math.nan] * len(per[i][-1])
    return _Forced(costs, starts, per, returns)


def _add_cost(total: float, nll: float) -> float:
    """total + nll, where a turn that was already impossible (+inf) stays +inf whatever a
    base says after an impossible prefix (τ's next-token law there may be undefined)."""
    return math.inf if math.isinf(total) or math.isinf(nll) else total + nll


def with_speakers(cfg: Config, teacher: str, student: str) -> Config:
    """``cfg`` with its two speaker tags replaced by ``teacher:`` and ``student:`` everywhere in
    the chat format (the tags and the prompt), as the imitator's renamed transcripts have them."""
    import dataclasses

    e = cfg.env
    if not teacher or not student or teacher == student:
        raise ValueError(f"two different, non-empty names are needed, got {teacher!r}, {student!r}")
    t, s = f"{teacher}:", f"{student}:"
    marker = "\x00"  # so that a name equal to the other tag is not replaced twice
    prompt = e.prompt.replace(e.teacher_tag, marker).replace(e.student_tag, s).replace(marker, t)
    env = dataclasses.replace(e, teacher_tag=t, student_tag=s, prompt=prompt)
    return dataclasses.replace(cfg, env=env).validate()


def speaker_pairs(k: int, seed: int = 0) -> list[tuple[str, str]]:
    """``k`` (teacher, student) pairs of different names, drawn (seeded) from the pool that the
    imitator's speaker renaming uses (klbudget.world.pools.speaker_names)."""
    from klbudget.world.imitator import N_SPEAKER_NAMES
    from klbudget.world.pools import speaker_names

    names = speaker_names(N_SPEAKER_NAMES)
    rng = np.random.default_rng([seed, 9])
    return [
        (names[a], names[b])
        for a, b in (rng.choice(len(names), size=2, replace=False) for _ in range(k))
    ]


def speaker_survey(
    cfg: Config, k: int, firsts: list[int], episodes: int, turns: int, world: Path | None
) -> str:
    """The empty-turn prior under ``k`` random speaker pairs (:func:`speaker_pairs`): one row
    of medians per pair and τ-prefix, then the median over pairs, as a text table."""
    lines = []
    for first in firsts:
        head = f"{'teacher':>14} {'student':>14} " + " ".join(f"{'n=' + str(n):>6}" for n in
                                                            range(1, turns + 1))  # fmt: skip
        lines += [f"−log base of the n-th empty teacher turn, nats (median over {episodes} "
                  f"conversations), after {first} turns of τ", head]  # fmt: skip
        rows = []
        for teacher, student in speaker_pairs(k):
            res = empty_turn_costs(with_speakers(cfg, teacher, student), episodes=episodes,
                                   turns=turns, first_tau=first, world=world)  # fmt: skip
            med = [_median(res.costs[:, n]) for n in range(turns)]
            rows.append(med)
            lines.append(f"{teacher:>14} {student:>14} " + " ".join(f"{c:6.2f}" for c in med))
        over = [_median(np.array([r[n] for r in rows])) for n in range(turns)]
        lines.append(f"{'median over pairs':>29} " + " ".join(f"{c:6.2f}" for c in over))
    return "\n".join(lines)


def _median(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(np.median(x)) if x.size else math.nan


def tag_costs(cfg: Config, res: PriorResult) -> PriorResult:
    """What the student's tag after each empty turn of ``res`` costs under model.path,
    teacher-forced on the same transcripts: the price a teacher that had to write the whole
    hand-over itself (separator and tag) would add to each empty turn."""
    from klbudget.base.hf import HFBase

    base = HFBase(cfg.model.path, temperature=cfg.model.temperature)
    tok = base.tokenizer
    e = cfg.env
    sep = len(tok(e.separator, add_special_tokens=False)["input_ids"])
    tag = len(tok(e.separator + e.student_tag, add_special_tokens=False)["input_ids"]) - sep
    logp = base.score(torch.as_tensor(res.ids)).numpy()  # log p(x_t | x_<t) at t - 1
    out = np.full(res.costs.shape, np.nan)
    for i, n in zip(*np.nonzero(res.starts >= 0), strict=True):
        s = int(res.starts[i, n]) + sep
        if not np.isnan(res.costs[i, n]) and s + tag <= res.ids.shape[1]:
            out[i, n] = -float(logp[i, s - 1 : s - 1 + tag].sum())
    return PriorResult(out, res.first_tau, res.ids, res.starts)


@dataclass(frozen=True)
class FixedTeacher:
    """Episodes of a teacher that writes the same turn every time (:func:`fixed_teacher`)."""

    text: str  # the teacher's turn ('' is the silent teacher)
    returns: np.ndarray  # (episodes,) summed sentiment reward of the student's replies
    replies: np.ndarray  # (episodes,) student replies paid
    costs: np.ndarray  # (episodes, turns) −log base of the n-th teacher turn (NaN: not reached)
    pools: dict[str, float] | None  # share of the student's replies from each world pool
    per_reply: float  # mean reward of the replies to the fixed turn (after any `before` turns)
    example: str = ""  # conversation 0's transcript after the prompt, as the model met it

    @property
    def kl(self) -> np.ndarray:
        """(episodes,) realized KL of writing the turn with certainty: Σ_n cost of turn n."""
        return np.nansum(self.costs, axis=1)

    def row(self, turns: int = 8) -> str:
        """One line of :func:`fixed_teacher_table`."""
        per = self.per_reply
        nth = np.nanmedian(self.costs[:, :turns], axis=0)
        pools = "" if self.pools is None else (
            f" {self.pools['student']:7.2f} {self.pools['teacher']:7.2f}"
        )  # fmt: skip
        return (f"{self.text!r:36} {self.returns.mean():6.2f} {self.replies.mean():7.1f} "
                f"{per:9.3f} {np.median(self.kl):7.2f}{pools}  "
                + " ".join(f"{c:5.2f}" for c in nth))  # fmt: skip


def fixed_teacher_table(results: list[FixedTeacher]) -> str:
    """The results side by side, one line per teacher turn."""
    pools = results and results[0].pools is not None
    head = (f"{'teacher turn':36} {'return':>6} {'replies':>7} {'per reply':>9} {'KL':>7}"
            + (f" {'student':>7} {'teacher':>7}" if pools else "")
            + "  cost of the n-th turn (median nats)")  # fmt: skip
    notes = [
        "return: summed reply reward per episode; KL: median over episodes of Σ −log base of "
        "the teacher's tokens (writing the turn with certainty).",
    ]
    if pools:
        notes.append("student/teacher: share of the student's replies whose sentence is from "
                     "the world's student pool / from τ's teacher pool.")  # fmt: skip
    return "\n".join([head, *(r.row() for r in results), *notes])


def fixed_teacher(
    cfg: Config,
    text: str,
    *,
    episodes: int = 64,
    seed: int = 1,
    world: Path | None = None,
    before: Sequence[str] = (),
) -> FixedTeacher:
    """``episodes`` conversations of the environment ``cfg`` describes in which every teacher
    turn is ``text`` followed by the turn separator (the environment then writes the student's
    tag), while the base writes the student's replies as in training. The silent teacher
    (``text`` = '') and a τ-like turn repeated show what silence buys in reward and costs in
    KL before any RL. With a world folder, each completed student reply is sorted by whose
    pool its sentence comes from: the world's student's or τ's. ``before``: teacher turns
    written first, in order; the costs, the reward per reply and the pools then count only
    the fixed turns and the replies to them (the return is the whole episode's)."""
    if episodes < 1:
        raise ValueError("episodes must be >= 1")
    env = build_env(cfg, n_envs=episodes)
    fixed = env.text.encode(text + env.chat.separator)
    first = [env.text.encode(t + env.chat.separator) for t in before]
    forced = _force_teacher(
        env, seed, lambda i, k: (first[k], False) if k < len(first) else (fixed, True)
    )
    width = max(1, max(len(c) for c in forced.costs))
    table = np.full((episodes, width), np.nan)
    for i, c in enumerate(forced.costs):
        table[i, : len(c)] = c
    replies = np.array([len(r) for r in env.replies], dtype=np.float64)
    answers = [t for r in env.replies for _, t in r[len(first) :]]  # the fixed turns' replies
    paid = env.pay(answers) if answers else [0.0]
    pools = None if world is None else _reply_pools(answers, world)
    example = env.text.decode(env.ids[0, len(env.prompt_ids) : env.t].tolist())
    return FixedTeacher(text, forced.returns, replies, table, pools, float(np.mean(paid)), example)


def _reply_pools(replies: list[str], world: Path) -> dict[str, float]:
    """Share of the non-empty student replies whose sentence is from the world's student
    pool, from τ's teacher pool, or neither (openers allowed: each pool's parser reads them)."""
    from klbudget.world.corpus import load_world

    w = load_world(world)
    counts = {"student": 0, "teacher": 0, "other": 0}
    for text in replies:
        if not text:
            continue
        if w.student.parse(text) is not None:
            counts["student"] += 1
        elif w.teacher.classify(text) is not None:
            counts["teacher"] += 1
        else:
            counts["other"] += 1
    total = max(sum(counts.values()), 1)
    return {k: v / total for k, v in counts.items()}


def base_alone(cfg: Config, episodes: int, seed: int) -> dict:
    """The base policy acting alone (budget 0) for `episodes` episodes: return, help rate,
    empty-turn fraction and (with base.world) τ-support violations, from the same records the
    evaluation writes."""
    env = build_env(cfg)
    base = env.base
    if cfg.base.world:
        from klbudget.pipelines.evaluate import tau_oracle

        oracle = tau_oracle(Path(cfg.base.world), base, cfg)
    else:
        oracle = None
    obs_dim = base.feature_dim + 2
    actor, critic = Actor(obs_dim, base.num_actions), Critic(obs_dim, cfg.agent.critic_hidden)
    g = torch.Generator().manual_seed(seed)
    eps = []
    for i in range(math.ceil(episodes / env.n_envs)):
        ep = run_episode(
            env, actor, critic, budget=0.0, mode="expected", budget_scale=1.0, generator=g,
            seed=seed + i, policy="base", reference=oracle,
        )  # fmt: skip
        for rec in ep.records:
            if oracle is not None:
                oracle.annotate(rec)
            rec["episode"] = len(eps)
            eps.append(parse_episode(rec, "help study"))
    support = m.tau_support_summary(eps) or {}
    return {
        "help_rate": m.help_rate(eps),
        "empty": (m.empty_turn_summary(eps, chat_format(cfg)) or {}).get("mean"),
        "outside": support.get("violation_share"),
        "return": float(sum(e.return_ for e in eps) / len(eps)),
    }


# Short turns a teacher could repeat all episode: what silence is measured against.
REPEATED_TURNS = ("Yes.", "Great question!", "I see. Tell me more.")


def silence_pays(
    cfg: Config, repeated: Sequence[str], *, episodes: int, world: Path | None = None
) -> dict:
    """Return per episode of the silent teacher, of teachers repeating each of ``repeated``
    and of the base acting alone, in the environment ``cfg`` describes (``episodes`` each);
    with the silent teacher's conversation 0 as the model wrote it, and with a ``world``
    whose pools the student's replies come from (:func:`fixed_teacher`)."""
    fixed = [fixed_teacher(cfg, text, episodes=episodes, world=world) for text in ("", *repeated)]
    alone = base_alone(cfg, episodes, seed=777)
    rows = [{"teacher": f.text, "return": float(f.returns.mean()),
             "replies": float(f.replies.mean()), "per_reply": f.per_reply,
             "kl_median": float(np.median(f.kl)), "pools": f.pools} for f in fixed]  # fmt: skip
    return {
        "fixed": rows,
        "table": fixed_teacher_table(fixed),
        "base_alone": {"return": alone["return"], "empty": alone["empty"]},
        "silent_transcript": fixed[0].example,
    }


def silence_table(res: dict) -> str:
    """The fixed-teacher table, the base alone, and the start of the silent conversation."""
    alone = res["base_alone"]
    empty = alone["empty"]
    lines = [
        res["table"],
        f"base acting alone: return {alone['return']:.2f}"
        + ("" if empty is None else f", empty-turn fraction {empty:.3f}"),
        "the silent teacher's conversation 0 (after the prompt):",
        *("  | " + line for line in res["silent_transcript"][:600].splitlines()),
    ]
    return "\n".join(lines)
