"""Episode and held-out records of a run folder (docs/run-folder.md), and their turns.

An episode record is one transcript written token by token. Tokens carry a `speaker`:
`prompt` (the fixed prompt), `agent` (the teacher's turn: the policy's tokens up to the
separator, then the student's tag the environment writes, together the hand-over
"\\n\\nStudent:") or `env` (the student's reply and the hand-back "\\n\\nTeacher:"). A
maximal run of agent tokens is one teacher turn and a maximal run of env tokens is one
student turn (docs/design.md, "Transcript", "Environment"). Whether a teacher turn
is complete or empty is decided on the decoded text with :class:`ChatFormat`, never by token
ids (docs/design.md, "Turn detection", "Empty response").

Every function here is pure except the two loaders, which only read a file. Malformed input
raises :class:`RecordError` with a one-line message that names the file and line.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from klbudget.envs.format import ChatFormat
from klbudget.runs.folder import from_jsonable

SPEAKERS = ("prompt", "agent", "env")
TURN_SPEAKERS = ("teacher", "student")
# Exact KL is non-negative; a tiny negative value is float round-off, a larger one a bug.
_KL_TOLERANCE = 1e-6


class RecordError(ValueError):
    """A record that does not follow docs/run-folder.md. The message is a single line."""


@dataclass(frozen=True)
class Token:
    """One token of a transcript with its per-step quantities (docs/run-folder.md)."""

    id: int  # tokenizer id
    text: str  # decoded text of this token alone
    speaker: str  # "prompt" | "agent" | "env"
    kl: float  # exact KL(π_t‖β_t) of the played distribution; 0 for non-agent tokens
    log_ratio: float  # log π_t(token) − log β_t(token); 0 for non-agent tokens
    budget_left: float | None = None  # budget after the step, when recorded
    kl_tau: float | None = None  # KL(π_t‖τ_t); None: not annotated, inf: τ(token) = 0
    tau_logp: float | None = None  # log τ_t(token); None: not annotated, -inf: τ(token) = 0
    help: bool | None = None  # the demonstrator wrote this token; None: not annotated
    kl_tau_in: float | None = None  # KL(π̃_t‖τ_t), π̃_t = π_t conditioned on τ_t's support
    tau_out: float | None = None  # π_t's mass outside τ_t's support


@dataclass(frozen=True)
class TurnNote:
    """A turn annotation written by evaluation where the world has a trusted policy τ."""

    speaker: str  # "teacher" | "student"
    start: int  # first token index (inclusive)
    end: int  # last token index (exclusive)
    text: str | None  # the turn's text as evaluation decoded it
    empty: bool | None  # evaluation's own empty-turn verdict
    in_support: bool | None  # τ could produce this turn; None: unknown
    cls: str | None  # behaviour class: one of τ's classes, "empty" or "novel"
    tau_pool: bool | None = None  # a student reply τ could have written as a teacher turn


@dataclass(frozen=True)
class Episode:
    """One episode record: a transcript with per-token and per-turn annotations."""

    episode: int  # episode counter
    policy: str  # "agent" | "base" | "tau" (eval) or "agent" (training)
    length: int  # target transcript length in tokens
    return_: float  # undiscounted episode return
    budget: float  # KL budget of this episode (nats)
    rewards: tuple[tuple[int, float], ...]  # (token index of the hand-over, reward)
    tokens: tuple[Token, ...]
    turns: tuple[TurnNote, ...] | None  # None when evaluation wrote no annotation


@dataclass(frozen=True)
class Turn:
    """A teacher or student turn found from speaker runs of the tokens."""

    speaker: str  # "teacher" (agent tokens) | "student" (env tokens)
    start: int  # first token index (inclusive)
    end: int  # last token index (exclusive)
    text: str  # concatenated token texts
    completed: bool  # teacher: hand-over to the student written; student: hand-back written
    empty: bool  # teacher turn that is completed and has no content (always False for students)


@dataclass(frozen=True)
class Heldout:
    """Teacher-forced log-probabilities of one held-out demonstration transcript."""

    transcript: int  # index of the demonstration
    teacher_logp: tuple[float, ...]  # log-probability of each teacher token (-inf allowed)
    n: int  # number of teacher tokens


# ----------------------------------------------------------------------------- validation


def _is_number(x: Any) -> bool:
    # bool is an int subclass in Python, but true/false in a numeric field is a writer bug.
    return isinstance(x, int | float) and not isinstance(x, bool)


def _require(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise RecordError(f"{where}: missing key {key!r}")
    return obj[key]


def _int(obj: dict[str, Any], key: str, where: str) -> int:
    v = _require(obj, key, where)
    if not isinstance(v, int) or isinstance(v, bool):
        raise RecordError(f"{where}: {key!r} must be an integer, got {v!r}")
    return v


def _unbounded(v: Any) -> Any:
    """A budget field: "inf" (strict JSON's spelling of +∞, no budget at all) as a float."""
    return math.inf if v == "inf" else v


def _float(obj: dict[str, Any], key: str, where: str, *, finite: bool = True) -> float:
    v = _require(obj, key, where)
    if not finite:
        v = _unbounded(v)
    if not _is_number(v) or math.isnan(v) or (finite and math.isinf(v)):
        kind = "a finite number" if finite else "a number"
        raise RecordError(f"{where}: {key!r} must be {kind}, got {v!r}")
    return float(v)


def _optional_float(obj: dict[str, Any], key: str, where: str, null: float) -> float | None:
    """Absent → None (not annotated); JSON null → `null` (the documented infinite value)."""
    if key not in obj:
        return None
    v = obj[key]
    if v is None:
        return null
    if not _is_number(v) or math.isnan(v):
        raise RecordError(f"{where}: {key!r} must be a number or null, got {v!r}")
    return float(v)


def _optional_bool(obj: dict[str, Any], key: str, where: str) -> bool | None:
    v = obj.get(key)
    if v is not None and not isinstance(v, bool):
        raise RecordError(f"{where}: {key!r} must be true, false or null, got {v!r}")
    return v


def _optional_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    v = obj.get(key)
    if v is not None and not isinstance(v, str):
        raise RecordError(f"{where}: {key!r} must be a string or null, got {v!r}")
    return v


def parse_token(obj: Any, where: str) -> Token:
    """Validate one entry of `tokens` (docs/run-folder.md)."""
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: a token must be an object, got {type(obj).__name__}")
    text = _require(obj, "text", where)
    if not isinstance(text, str):
        raise RecordError(f"{where}: 'text' must be a string, got {text!r}")
    speaker = _require(obj, "speaker", where)
    if speaker not in SPEAKERS:
        raise RecordError(f"{where}: 'speaker' must be one of {SPEAKERS}, got {speaker!r}")
    kl = _float(obj, "kl", where)
    if kl < -_KL_TOLERANCE:
        raise RecordError(f"{where}: 'kl' must be >= 0, got {kl!r}")
    budget_left = _unbounded(obj.get("budget_left"))
    if budget_left is not None and (not _is_number(budget_left) or math.isnan(budget_left)):
        raise RecordError(f"{where}: 'budget_left' must be a number or 'inf', got {budget_left!r}")
    kl_tau = _optional_float(obj, "kl_tau", where, null=math.inf)
    if kl_tau is not None and kl_tau < -_KL_TOLERANCE:
        raise RecordError(f"{where}: 'kl_tau' must be >= 0 or null, got {kl_tau!r}")
    return Token(
        id=_int(obj, "id", where),
        text=text,
        speaker=speaker,
        kl=max(kl, 0.0),
        log_ratio=_float(obj, "log_ratio", where),
        budget_left=None if budget_left is None else float(budget_left),
        kl_tau=None if kl_tau is None else max(kl_tau, 0.0),
        tau_logp=_optional_float(obj, "tau_logp", where, null=-math.inf),
        help=_optional_bool(obj, "help", where),
        kl_tau_in=_optional_float(obj, "kl_tau_in", where, null=math.nan),
        tau_out=_optional_float(obj, "tau_out", where, null=math.nan),
    )


def parse_turn_note(obj: Any, n_tokens: int, where: str) -> TurnNote:
    """Validate one entry of the optional `turns` annotation."""
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: a turn must be an object, got {type(obj).__name__}")
    speaker = _require(obj, "speaker", where)
    if speaker not in TURN_SPEAKERS:
        raise RecordError(f"{where}: 'speaker' must be one of {TURN_SPEAKERS}, got {speaker!r}")
    start, end = _int(obj, "start", where), _int(obj, "end", where)
    if not 0 <= start <= end <= n_tokens:
        raise RecordError(f"{where}: need 0 <= start <= end <= {n_tokens}, got [{start}, {end})")
    return TurnNote(
        speaker=speaker,
        start=start,
        end=end,
        text=_optional_str(obj, "text", where),
        empty=_optional_bool(obj, "empty", where),
        in_support=_optional_bool(obj, "in_support", where),
        cls=_optional_str(obj, "class", where),
        tau_pool=_optional_bool(obj, "tau_pool", where),
    )


def parse_episode(obj: Any, where: str = "<record>") -> Episode:
    """Validate one line of `episodes.jsonl` / `eval/episodes_*.jsonl` (docs/run-folder.md)."""
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: an episode record must be an object")
    raw_tokens = _require(obj, "tokens", where)
    if not isinstance(raw_tokens, list):
        raise RecordError(f"{where}: 'tokens' must be a list")
    tokens = tuple(parse_token(t, f"{where}: tokens[{i}]") for i, t in enumerate(raw_tokens))
    raw_rewards = _require(obj, "rewards", where)
    if not isinstance(raw_rewards, list):
        raise RecordError(f"{where}: 'rewards' must be a list of [token_index, reward]")
    rewards: list[tuple[int, float]] = []
    for i, pair in enumerate(raw_rewards):
        ok = (
            isinstance(pair, list)
            and len(pair) == 2
            and isinstance(pair[0], int)
            and not isinstance(pair[0], bool)
            and _is_number(pair[1])
            and math.isfinite(pair[1])
        )
        if not ok:
            raise RecordError(f"{where}: rewards[{i}] must be [token_index, reward], got {pair!r}")
        if not 0 <= pair[0] < len(tokens):
            raise RecordError(f"{where}: rewards[{i}] token index {pair[0]} is out of range")
        rewards.append((pair[0], float(pair[1])))
    turns: tuple[TurnNote, ...] | None = None
    if obj.get("turns") is not None:
        if not isinstance(obj["turns"], list):
            raise RecordError(f"{where}: 'turns' must be a list")
        turns = tuple(
            parse_turn_note(t, len(tokens), f"{where}: turns[{i}]")
            for i, t in enumerate(obj["turns"])
        )
    policy = _require(obj, "policy", where)
    if not isinstance(policy, str):
        raise RecordError(f"{where}: 'policy' must be a string, got {policy!r}")
    return Episode(
        episode=_int(obj, "episode", where),
        policy=policy,
        length=_int(obj, "length", where),
        return_=_float(obj, "return", where),
        budget=_float(obj, "budget", where, finite=False),
        rewards=tuple(rewards),
        tokens=tokens,
        turns=turns,
    )


def parse_heldout(obj: Any, where: str = "<record>") -> Heldout:
    """Validate one line of `eval/heldout_<policy>.jsonl`; a null log-prob means −∞."""
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: a held-out record must be an object")
    raw = _require(obj, "teacher_logp", where)
    if not isinstance(raw, list):
        raise RecordError(f"{where}: 'teacher_logp' must be a list")
    logp: list[float] = []
    for i, v in enumerate(raw):
        if v is None:
            logp.append(-math.inf)
            continue
        # A log-probability above 0 (beyond round-off) or NaN cannot come from a distribution.
        if not _is_number(v) or math.isnan(v) or v > _KL_TOLERANCE:
            raise RecordError(f"{where}: teacher_logp[{i}] must be a number <= 0, got {v!r}")
        logp.append(min(float(v), 0.0))
    n = _int(obj, "n", where)
    if n != len(logp):
        raise RecordError(f"{where}: 'n' is {n} but teacher_logp has {len(logp)} entries")
    return Heldout(transcript=_int(obj, "transcript", where), teacher_logp=tuple(logp), n=n)


# ----------------------------------------------------------------------------- loading


def iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield `("FILE:LINE", object)` for each non-blank line of a JSONL file.

    Every line a writer finishes ends with a newline. A last line without one that does not
    parse is what a run killed mid-write leaves: it is skipped with a warning. Invalid JSON
    anywhere else is an error.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RecordError(f"{path}: cannot read ({e.strerror or e})") from e
    unfinished = bool(raw) and not raw.endswith(b"\n")
    if unfinished:  # a cut may fall inside a multi-byte character: decode what is whole
        head, _, tail = raw.rpartition(b"\n")
        raw = head + (b"\n" if head else b"")
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise RecordError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    if unfinished:
        text = tail.decode("utf-8", errors="replace")
        try:
            json.loads(text)
            lines.append(text)  # whole after all, just without its newline
        except json.JSONDecodeError:
            warnings.warn(
                f"{path}:{len(lines) + 1}: skipping a truncated last line (a run killed while "
                "writing it)",
                stacklevel=2,
            )
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from e


def load_episodes(path: Path) -> list[Episode]:
    """Read and validate every episode record of a JSONL file."""
    return [parse_episode(obj, where) for where, obj in iter_jsonl(path)]


def load_heldout(path: Path) -> list[Heldout]:
    """Read and validate every held-out record of a JSONL file."""
    return [parse_heldout(obj, where) for where, obj in iter_jsonl(path)]


def load_rows(path: Path) -> list[dict[str, Any]]:
    """Read `metrics.jsonl`: one JSON object per PPO update."""
    rows: list[dict[str, Any]] = []
    for where, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise RecordError(f"{where}: a metrics row must be an object")
        # Strict JSON spells +-inf "inf"/"-inf" and an undefined value null (NaN here).
        rows.append({k: math.nan if v is None else from_jsonable(v) for k, v in obj.items()})
    return rows


# ----------------------------------------------------------------------------- turns


def split_turns(episode: Episode, fmt: ChatFormat | None = None) -> list[Turn]:
    """Split the tokens into turns: each maximal run of agent tokens is a teacher turn and each
    maximal run of env tokens a student turn; prompt tokens belong to no turn.

    A teacher turn is *completed* once its text contains the hand-over to the student, and
    *empty* when it is completed and :meth:`ChatFormat.is_empty_teacher_turn` holds for its
    text up to that hand-over, the first turn's with the prompt's :attr:`ChatFormat.opening`
    (docs/design.md, "Empty response": by content, not token count).
    """
    fmt = fmt or ChatFormat()
    turns: list[Turn] = []
    tokens = episode.tokens
    i = 0
    while i < len(tokens):
        speaker = tokens[i].speaker
        j = i
        while j < len(tokens) and tokens[j].speaker == speaker:
            j += 1
        if speaker != "prompt":
            text = "".join(t.text for t in tokens[i:j])
            if speaker == "agent":
                cut = text.find(fmt.to_student)
                completed = cut >= 0
                # Anything after the hand-over inside the same run is not teacher content.
                head = text[: cut + len(fmt.to_student)] if completed else text
                if i > 0 and tokens[i - 1].speaker == "prompt":
                    head = fmt.opening + head  # the first turn began in the prompt
                empty = completed and fmt.is_empty_teacher_turn(head)
                turns.append(Turn("teacher", i, j, text, completed, empty))
            else:
                completed = fmt.to_teacher in text
                turns.append(Turn("student", i, j, text, completed, False))
        i = j
    return turns
