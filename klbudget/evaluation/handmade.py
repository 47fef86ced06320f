"""Hand-made episode records and run folders in the docs/run-folder.md schema.

For tests with known answers and for checking a report by hand: write a transcript turn by
turn with the exact tokens and per-token numbers you want, then write it to a run folder.

    b = EpisodeBuilder(policy="agent", length=64)
    b.teacher([" Hi", HAND_OVER], kl=[0.5, 0.1], reward=0.9)   # a teacher turn, then reward
    b.student([" ok", HAND_BACK])                               # the student's reply
    b.teacher([HAND_OVER], kl=[2.0])                            # an empty teacher turn
    record = b.record()
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from klbudget.envs.format import ChatFormat

HAND_OVER = ChatFormat().to_student  # ends a teacher turn: "\n\nStudent:"
HAND_BACK = ChatFormat().to_teacher  # ends a student turn: "\n\nTeacher:"


class _Unset:
    """Marks an optional per-token field that is left out of the record (unlike None → null)."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


def _per_token(value: float | Sequence[float | None] | None, n: int, name: str) -> list[Any]:
    if value is None or isinstance(value, int | float):
        return [value] * n
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} values for {n} tokens")
    return list(value)


class EpisodeBuilder:
    """Build one episode record token by token (docs/run-folder.md)."""

    def __init__(
        self,
        *,
        episode: int = 0,
        policy: str = "agent",
        length: int = 256,
        budget: float = 10.0,
        fmt: ChatFormat | None = None,
        prompt_tokens: Sequence[str] | None = None,
    ) -> None:
        self.fmt = fmt or ChatFormat()
        self.episode, self.policy, self.length, self.budget = episode, policy, length, budget
        self.budget_left = budget
        self.vocab: dict[str, int] = {}  # same text → same id, so n-gram repeats are real
        self.tokens: list[dict[str, Any]] = []
        self.rewards: list[list[float]] = []
        self.turns: list[dict[str, Any]] = []
        for text in prompt_tokens if prompt_tokens is not None else [self.fmt.prompt]:
            self._token(text, "prompt")

    def _token(self, text: str, speaker: str, **fields: Any) -> dict[str, Any]:
        tok = {"id": self.vocab.setdefault(text, len(self.vocab)), "text": text}
        tok |= {"speaker": speaker, "kl": 0.0, "log_ratio": 0.0, "budget_left": self.budget_left}
        tok |= {k: v for k, v in fields.items() if v is not _UNSET}
        self.tokens.append(tok)
        return tok

    def teacher(
        self,
        texts: Sequence[str],
        *,
        kl: float | Sequence[float] = 0.0,
        log_ratio: float | Sequence[float] | None = None,
        kl_tau: Any = _UNSET,
        tau_logp: Any = _UNSET,
        kl_tau_in: Any = _UNSET,
        tau_out: Any = _UNSET,
        help: bool | Sequence[bool] | None = None,
        cls: str | None = None,
        in_support: bool | None = None,
        annotate: bool = False,
        reward: float | None = None,
    ) -> EpisodeBuilder:
        """Append agent tokens. `log_ratio` defaults to `kl`. `kl_tau`/`tau_logp` (None means
        JSON null, i.e. infinite), `kl_tau_in`, `tau_out` and `help` are written only when
        given. The turn is
        annotated in `turns` when `cls`, `in_support` or `annotate` is given; `reward` is
        attached to the turn's last token (the hand-over)."""
        n = len(texts)
        kls = _per_token(kl, n, "kl")
        ratios = _per_token(kl if log_ratio is None else log_ratio, n, "log_ratio")
        taus = [_UNSET] * n if kl_tau is _UNSET else _per_token(kl_tau, n, "kl_tau")
        logps = [_UNSET] * n if tau_logp is _UNSET else _per_token(tau_logp, n, "tau_logp")
        ins = [_UNSET] * n if kl_tau_in is _UNSET else _per_token(kl_tau_in, n, "kl_tau_in")
        outs = [_UNSET] * n if tau_out is _UNSET else _per_token(tau_out, n, "tau_out")
        helps = [_UNSET] * n if help is None else _per_token(help, n, "help")
        start = len(self.tokens)
        for k, text in enumerate(texts):
            # Budget accounting of docs/design.md, "Mechanics": decrement by the realized log-ratio,
            # clamp at 0.
            self.budget_left = max(self.budget_left - ratios[k], 0.0)
            self._token(
                text,
                "agent",
                kl=kls[k],
                log_ratio=ratios[k],
                budget_left=self.budget_left,
                kl_tau=taus[k],
                tau_logp=logps[k],
                kl_tau_in=ins[k],
                tau_out=outs[k],
                help=helps[k],
            )
        if cls is not None or in_support is not None or annotate:
            text = "".join(texts)
            self.turns.append(
                {
                    "speaker": "teacher",
                    "start": start,
                    "end": len(self.tokens),
                    "text": text,
                    "empty": self.fmt.is_empty_teacher_turn(text),
                    "in_support": in_support,
                    "class": cls,
                }
            )
        if reward is not None:
            self.rewards.append([len(self.tokens) - 1, reward])
        return self

    def student(
        self, texts: Sequence[str], *, annotate: bool = False, tau_pool: bool | None = None
    ) -> EpisodeBuilder:
        """Append env tokens (the student's reply and the hand-back); annotated when
        `annotate` or `tau_pool` is given."""
        start = len(self.tokens)
        for text in texts:
            self._token(text, "env")
        if annotate or tau_pool is not None:
            note = {"speaker": "student", "start": start, "end": len(self.tokens),
                    "text": "".join(texts), "empty": None, "in_support": None,
                    "class": None}  # fmt: skip
            if tau_pool is not None:
                note["tau_pool"] = tau_pool
            self.turns.append(note)
        return self

    def record(self) -> dict[str, Any]:
        """The episode record; `return` is the sum of the rewards."""
        rec: dict[str, Any] = {
            "episode": self.episode,
            "policy": self.policy,
            "length": self.length,
            "return": sum(r for _, r in self.rewards),
            "budget": self.budget,
            "rewards": [list(r) for r in self.rewards],
            "tokens": self.tokens,
        }
        if self.turns:
            rec["turns"] = self.turns
        return rec


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write one JSON object per line (creating parent folders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    return path


def write_run(
    run_dir: Path,
    *,
    config: dict[str, Any] | None = None,
    episodes: Sequence[dict[str, Any]] | None = None,
    metrics_rows: Sequence[dict[str, Any]] | None = None,
    eval_episodes: dict[tuple[str, int], Sequence[dict[str, Any]]] | None = None,
    heldout: dict[str, Sequence[dict[str, Any]]] | None = None,
) -> Path:
    """Write a run folder: config.toml, episodes.jsonl, metrics.jsonl and
    eval/episodes_<policy>_L<length>.jsonl, eval/heldout_<policy>.jsonl (each when given)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (run_dir / "config.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
    if episodes is not None:
        write_jsonl(run_dir / "episodes.jsonl", episodes)
    if metrics_rows is not None:
        write_jsonl(run_dir / "metrics.jsonl", metrics_rows)
    for (policy, length), recs in (eval_episodes or {}).items():
        write_jsonl(run_dir / "eval" / f"episodes_{policy}_L{length}.jsonl", recs)
    for policy, recs in (heldout or {}).items():
        write_jsonl(run_dir / "eval" / f"heldout_{policy}.jsonl", recs)
    return run_dir
