"""τ inside the chat environment: exact log τ(next teacher token) for conversations in play.

`TauOracle(tm, num_actions)(env, rows)` reads each conversation's transcript so far, splits it
into turns with the chat format, and asks the token model for τ's next-token
distribution given the earlier turns and the current teacher turn's token prefix. Used to
let τ act (the demo's τ row) and to annotate the agent's tokens with KL(π_t‖τ_t).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from klbudget.base.protocol import BaseStep
from klbudget.envs.chat import ChatEnv
from klbudget.envs.format import ChatFormat
from klbudget.world.token_model import TeacherTokenModel

HELP_MODES = ("token", "turn")


def history_before_teacher_turn(fmt: ChatFormat, text: str) -> list[tuple[str, str]]:
    """The finished turns of a transcript that is in a teacher turn. The current teacher
    turn, begun or not (at the start of the chat it is split as an empty teacher turn), is
    the last split turn unless a student turn is."""
    turns = fmt.split_turns(text)
    return turns[:-1] if turns and turns[-1][0] == "teacher" else turns


class TauOracle:
    """τ for conversations in a ChatEnv: its next-token distribution, help, annotations.

    As the environment's `demonstrator` (help, docs/design.md, "Pessimistic bases"), τ writes the
    next teacher token (`help_mode="token"`) or the rest of the teacher turn (`"turn"`), sampled
    with the environment's generator. After a turn prefix that τ could never have written, τ has no
    next token; asked for help there, it appends one whole turn of its own (content and
    hand-over), so a help step never produces an empty turn.
    """

    def __init__(self, tm: TeacherTokenModel, num_actions: int, help_mode: str = "token") -> None:
        if help_mode not in HELP_MODES:
            raise ValueError(f"help mode must be one of {HELP_MODES}, got {help_mode!r}")
        self.tm = tm
        self.num_actions = num_actions
        self.help_mode = help_mode

    @staticmethod
    def context(env: ChatEnv, i: int) -> tuple[list[tuple[str, str]], list[int]]:
        """(history, current teacher-turn prefix ids) of conversation i in its teacher turn."""
        history = history_before_teacher_turn(env.chat, env.transcript(i))
        return history, list(env.convs[i].turn_ids)

    def __call__(self, env: ChatEnv, rows: Tensor) -> Tensor:
        """(R, A) float32 log τ over actions for the conversations `rows` (teacher's turn)."""
        contexts = [self.context(env, i) for i in rows.tolist()]
        histories = [h for h, _ in contexts]
        prefixes = [p for _, p in contexts]
        logp = self.tm.next_token_logprobs_batch(histories, prefixes).float()
        out = torch.full((len(histories), self.num_actions), -torch.inf)
        v = min(self.num_actions, logp.shape[-1])
        out[:, :v] = logp[:, :v]
        return out

    def help(self, env: ChatEnv, i: int) -> list[int]:
        """The tokens τ writes when conversation i asks for help (class docstring)."""
        history, prefix = self.context(env, i)
        if not self.tm.prefix_in_support(history, prefix):
            # τ has no next token after this prefix: it finishes the turn with one whole turn
            # of its own, drawn from P(u | h), so help never produces an empty turn.
            return self.tm.sample_continuation(history, [], env.generator)
        if self.help_mode == "turn":
            return self.tm.sample_continuation(history, prefix, env.generator)
        return [self.tm.sample_next_token(history, prefix, env.generator)]

    def _reply_content(self, text: str) -> str:
        """A student turn's words: without its tag and the hand-back to the teacher."""
        fmt = self.tm.fmt
        if text.endswith(fmt.to_teacher):
            text = text[: -len(fmt.to_teacher)]
        text = text.strip()
        return text[len(fmt.student_tag) :].strip() if text.startswith(fmt.student_tag) else text

    def annotate(self, record: dict) -> None:
        """Add the `turns` annotation (docs/run-folder.md) to an episode record in place."""
        fmt = self.tm.fmt
        tokens = record["tokens"]
        notes, i = [], 0
        while i < len(tokens):
            spk = tokens[i]["speaker"]
            j = i
            while j < len(tokens) and tokens[j]["speaker"] == spk:
                j += 1
            if spk != "prompt":
                text = "".join(t["text"] for t in tokens[i:j])
                note = {"speaker": "teacher" if spk == "agent" else "student",
                        "start": i, "end": j, "text": text}  # fmt: skip
                if spk == "agent":
                    done = text.endswith(fmt.to_student)
                    content = fmt.teacher_content(text)
                    note["empty"] = content == ""
                    if done:
                        cls = None if content == "" else self.tm.classify([], content)
                        note["in_support"] = cls is not None
                        note["class"] = "empty" if content == "" else (cls or "novel")
                else:  # a reply τ could have written as a teacher turn: roles swapped
                    reply = self._reply_content(text)
                    note["tau_pool"] = reply != "" and self.tm.classify([], reply) is not None
                notes.append(note)
            i = j
        record["turns"] = notes


class TauBase:
    """τ as a `BasePolicy` member, so that an ensemble can contain the demonstrator itself.

    It follows each conversation's turns on the decoded text, as the environment does, and
    gives τ's exact next-token log-probabilities in teacher turns. In student turns τ has
    nothing to say; it reports the uniform distribution there (no ensemble reads it: agents
    act only in teacher turns, and posteriors update only on teacher tokens). Its
    environment logits and features are zeros: it is never member 0.
    """

    feature_dim = 1

    def __init__(self, tm: TeacherTokenModel, max_length: int = 1 << 30) -> None:
        self.tm = tm
        self.fmt = tm.fmt
        self.vocab_size = tm.vocab_size
        self.num_actions = tm.vocab_size
        self.max_length = max_length
        self._tail = 4 * max(len(self.fmt.to_student), len(self.fmt.to_teacher))

    def reset(self, input_ids: Tensor, capacity: int | None = None) -> BaseStep:
        self.ids = [list(map(int, row)) for row in input_ids.tolist()]
        n = len(self.ids)
        self.teacher = [True] * n  # the prompt ends with the teacher tag
        self.turn_ids: list[list[int]] = [[] for _ in range(n)]
        self.tail = [""] * n
        return self._describe()

    def step(self, tokens: Tensor) -> BaseStep:
        for i, tok in enumerate(tokens.tolist()):
            self.ids[i].append(int(tok))
            self.turn_ids[i].append(int(tok))
            self.tail[i] = (self.tail[i] + self.tm.tokenizer.decode([int(tok)]))[-self._tail :]
            handover = self.fmt.to_student if self.teacher[i] else self.fmt.to_teacher
            if self.tail[i].endswith(handover):
                self.teacher[i] = not self.teacher[i]
                self.turn_ids[i], self.tail[i] = [], ""
        return self._describe()

    def score(self, input_ids: Tensor) -> Tensor:
        """Teacher-forced log τ of every token after the first, for transcripts that start
        with the prompt (uniform inside the prompt and in student turns)."""
        p = len(self.tm.tokenizer(self.fmt.prompt, add_special_tokens=False)["input_ids"])
        n, t = input_ids.shape
        if t <= p:
            return torch.full((n, t - 1), -math.log(self.vocab_size))
        steps = [self.reset(input_ids[:, :p]).logp]
        steps += [self.step(input_ids[:, j]).logp for j in range(p, t - 1)]
        logp = torch.stack(steps, 1).gather(-1, input_ids[:, p:, None]).squeeze(-1)
        inside = torch.full((n, p - 1), -math.log(self.vocab_size))
        return torch.cat([inside, logp], 1)

    def _describe(self) -> BaseStep:
        n, v = len(self.ids), self.vocab_size
        logp = torch.full((n, v), -math.log(v))
        for i in range(n):
            if self.teacher[i]:
                text = self.tm.tokenizer.decode(
                    self.ids[i][: len(self.ids[i]) - len(self.turn_ids[i])]
                )
                history = history_before_teacher_turn(self.fmt, text)
                logp[i] = self.tm.next_token_logprobs(history, self.turn_ids[i]).float()
        return BaseStep(env_logits=torch.zeros(n, v), logp=logp, features=torch.zeros(n, 1))
