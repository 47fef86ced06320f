"""The default world and its seeded demonstration corpus (docs/design.md, "The world").

A world folder holds

    world.json      config, its hash, chat format, the pools (teacher sentences with class
                    and home style, student sentences with category, the teacher's
                    openers); written last, so its
                    presence marks a complete folder
    train.jsonl     one demonstration per line
    heldout.jsonl   the held-out split, same schema

Each line: {"id", "split", "style", "text", "turns": [{"speaker", "content", "class"} |
{"speaker", "content", "category"}]} where "text" is ChatFormat.render(turns). A transcript
draws a style, then alternates τ's turns and the student's replies until its text has
``transcript_pretokens`` byte-level pre-tokens (≈ tokens of a BPE fitted to the corpus), and
ends after a student reply, i.e. with the teacher tag. Transcript k of a split uses its own
random stream, so the corpus is byte-identical for a given config.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from klbudget.envs.format import ChatFormat
from klbudget.world.config import WORLD_VERSION, WorldConfig
from klbudget.world.pools import (
    STUDENT_CATEGORIES,
    TEACHER_CLASSES,
    Pools,
    build_pools,
    reply_category,
)
from klbudget.world.student import Student
from klbudget.world.teacher import Teacher, Turn
from klbudget.world.tokenizer import count_pretokens, turn_piece

SPLITS: tuple[str, ...] = ("train", "heldout")


@dataclass(frozen=True)
class World:
    """τ, the world's student and the chat format of one WorldConfig."""

    cfg: WorldConfig
    pools: Pools
    teacher: Teacher
    student: Student
    fmt: ChatFormat

    @staticmethod
    def from_pools(cfg: WorldConfig, pools: Pools, fmt: ChatFormat | None = None) -> World:
        """Assemble a world from its pools (everything else derives from ``cfg``)."""
        teacher = Teacher(pools, cfg)
        student = Student(pools, teacher, cfg.quiet_students, cfg.quiet_rate)
        return World(cfg, pools, teacher, student, fmt or ChatFormat())

    @staticmethod
    def from_config(cfg: WorldConfig, fmt: ChatFormat | None = None) -> World:
        """Build the pools from chitchat-dataset (about 4 s) and assemble the world."""
        pools = build_pools(
            cfg.seed,
            cfg.teacher_pool_size,
            cfg.student_pool_size,
            (cfg.teacher_min_words, cfg.teacher_max_words),
            (cfg.student_min_words, cfg.student_max_words),
            cfg.n_openers,
        )
        return World.from_pools(cfg, pools, fmt)

    def sample_transcript(self, rng: np.random.Generator) -> tuple[int, list[Turn]]:
        """(style, turns) of one demonstration, drawn from the generative model."""
        style = int(rng.integers(self.cfg.n_styles))
        quiet = self.student.silent_ok and bool(rng.random() < self.cfg.quiet_students)
        turns: list[Turn] = []
        # Pieces tokenize independently (tokenizer.py), so their pre-token counts add up.
        n = count_pretokens(self.fmt.prompt)
        while n < self.cfg.transcript_pretokens:
            u = self.teacher.sample_turn_given_style(style, turns, rng)
            r = self.student.sample_reply(u, rng, quiet, turns)
            turns += [("teacher", u), ("student", r)]
            n += count_pretokens(turn_piece(self.fmt, "teacher", u))
            n += count_pretokens(turn_piece(self.fmt, "student", r))
        return style, turns

    def sample_peer_chat(
        self, rng: np.random.Generator, quiet_share: float, single_quiet: bool = False
    ) -> list[Turn]:
        """Turns of a chat between two of the world's students (no τ in it): the first
        speaker's turns are labelled "teacher", the second's "student", for rendering.

        Each speaker is the world's student (its sentences, its own opener habit), replying to
        the other's last turn (which τ could not have written, so the reply mix is the
        average row), and is quiet with probability ``quiet_share``, drawn once: after a
        first turn that always says something, a quiet speaker says nothing with probability
        ``quiet_rate``. With ``single_quiet`` at most one of the two is quiet, as in τ's
        conversations: with probability ``quiet_share`` one of them, in a random seat. The
        same length rule as :meth:`sample_transcript`. These are the other conversations a
        pretrained base has read; none of them is τ's.
        """
        student = self.student
        if single_quiet:
            seat = int(rng.integers(2)) if rng.random() < quiet_share else -1
            quiet = [seat == 0, seat == 1]
        else:
            quiet = [bool(rng.random() < quiet_share) for _ in range(2)]
        turns: list[Turn] = []
        n = count_pretokens(self.fmt.prompt)
        roles = ("teacher", "student")
        while n < self.cfg.transcript_pretokens:
            for me in (0, 1):
                # The history from this speaker's side: its own turns are the "student" ones.
                own = [
                    ("student" if speaker == roles[me] else "teacher", content)
                    for speaker, content in turns
                ]
                last = turns[-1][1] if turns else ""
                said = any(speaker == "student" for speaker, _ in own)
                reply = (
                    ""
                    if quiet[me] and said and rng.random() < self.cfg.quiet_rate
                    else student.sample_reply(last, rng, False, own)
                )
                turns.append((roles[me], reply))
                n += count_pretokens(turn_piece(self.fmt, roles[me], reply))
        return turns

    def record(self, k: int, split: str, style: int, turns: Sequence[Turn]) -> dict[str, object]:
        """The JSONL record of one transcript (module docstring)."""
        rows: list[dict[str, object]] = []
        for speaker, content in turns:
            if speaker == "teacher":
                label = self.teacher.classify(content)
                rows.append({"speaker": speaker, "content": content, "class": label})
            else:
                cat = reply_category(content)
                rows.append({"speaker": speaker, "content": content, "category": cat})
        text = self.fmt.render(list(turns))
        return {"id": k, "split": split, "style": style, "text": text, "turns": rows}

    def manifest(self) -> dict[str, object]:
        """Contents of world.json."""
        teacher = [
            {"text": u, "class": c, "home_style": int(h)}
            for u, c, h in zip(
                self.teacher.sentences, self.teacher.classes, self.teacher.home, strict=True
            )
        ]
        student = [
            {"text": r, "category": k}
            for r, k in zip(self.student.sentences, self.student.categories, strict=True)
        ]
        return {
            "world_version": WORLD_VERSION,
            "hash": self.cfg.hash,
            "config": self.cfg.to_dict(),
            "format": asdict(self.fmt),
            "teacher_sentences": teacher,
            "student_sentences": student,
            "openers": list(self.teacher.openers),
        }


def _dump(obj: object) -> str:
    # Sorted keys and ASCII escapes make the bytes independent of dict order and locale.
    return json.dumps(obj, sort_keys=True, ensure_ascii=True)


def build_world(cfg: WorldConfig, out_dir: str | Path) -> Path:
    """Write the world folder for ``cfg`` (module docstring) and return it.

    A folder that already holds a complete world with the same hash is returned unchanged.
    """
    out = Path(out_dir)
    manifest_path = out / "world.json"
    if manifest_path.exists() and all((out / f"{s}.jsonl").exists() for s in SPLITS):
        if json.loads(manifest_path.read_text()).get("hash") == cfg.hash:
            return out
        raise FileExistsError(f"{out} holds a different world; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    world = World.from_config(cfg)
    sizes = {"train": cfg.n_train, "heldout": cfg.n_heldout}
    for si, split in enumerate(SPLITS):
        with open(out / f"{split}.jsonl", "w", encoding="ascii", newline="\n") as f:
            for k in range(sizes[split]):
                style, turns = world.sample_transcript(np.random.default_rng([cfg.seed, 4, si, k]))
                f.write(_dump(world.record(k, split, style, turns)) + "\n")
    manifest_path.write_text(_dump(world.manifest()) + "\n", encoding="ascii")
    return out


class WorldError(ValueError):
    """A world folder that cannot be read (missing, corrupt or of another version)."""


def load_world(world_dir: str | Path) -> World:
    """The World of a folder written by :func:`build_world` (no dataset access needed);
    :class:`WorldError` with one line when the folder is not one."""
    path = Path(world_dir) / "world.json"
    try:
        return _world_from_manifest(json.loads(path.read_text()))
    except WorldError as err:
        raise WorldError(f"{path}: {err}") from err
    except FileNotFoundError as err:
        raise WorldError(f"{world_dir} is not a world folder (no world.json)") from err
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WorldError(f"{path} is not a valid world manifest: {first}") from err


def _world_from_manifest(manifest: dict) -> World:
    if manifest["world_version"] != WORLD_VERSION:
        raise WorldError(
            f"world folder has version {manifest['world_version']}, not {WORLD_VERSION}"
        )
    pools = Pools(
        teacher={
            c: tuple(r["text"] for r in manifest["teacher_sentences"] if r["class"] == c)
            for c in TEACHER_CLASSES
        },
        student={
            k: tuple(r["text"] for r in manifest["student_sentences"] if r["category"] == k)
            for k in STUDENT_CATEGORIES
        },
        openers=tuple(manifest.get("openers", ())),
    )
    world = World.from_pools(
        WorldConfig(**manifest["config"]), pools, ChatFormat(**manifest["format"])
    )
    if world.teacher.home.tolist() != [r["home_style"] for r in manifest["teacher_sentences"]]:
        raise ValueError("home styles in world.json do not match its config")
    return world


def load_split(world_dir: str | Path, split: str) -> list[dict]:
    """The records of one split ("train" or "heldout")."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    path = Path(world_dir) / f"{split}.jsonl"
    records = []
    try:
        with open(path, encoding="ascii") as f:
            for n, line in enumerate(f, start=1):
                rec = json.loads(line)
                problem = _record_problem(rec)
                if problem:
                    raise WorldError(f"{path}, line {n}: {problem}")
                records.append(rec)
    except FileNotFoundError as err:
        raise WorldError(f"{world_dir} has no {split} split ({path.name})") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WorldError(f"{path}, line {n}: not a JSON record ({err})") from err
    if not records:
        raise WorldError(f"{path} holds no transcript")
    return records


def _record_problem(rec: object) -> str:
    """What is wrong with one corpus record ('' when nothing): an object with the transcript
    `text` and its `turns`, each a speaker and its content."""
    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
        return "a record needs a string 'text'"
    turns = rec.get("turns")
    if not isinstance(turns, list) or not all(
        isinstance(t, dict) and isinstance(t.get("speaker"), str)
        and isinstance(t.get("content"), str) for t in turns
    ):  # fmt: skip
        return "a record needs 'turns': a list of {speaker, content} strings"
    return ""


def record_turns(record: dict) -> list[Turn]:
    """(speaker, content) turns of a corpus record."""
    return [(t["speaker"], t["content"]) for t in record["turns"]]
