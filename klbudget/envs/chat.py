"""The batched teacher/student chat (docs/design.md, "Transcript", "Environment", "Reward").

N conversations start from the same prompt and advance in lockstep: every `step` appends
exactly one token to every conversation, so all transcripts always have the same length and
the base model runs one forward pass per step over all of them. A conversation is either in
the agent's (teacher's) turn, where the appended token is the agent's action, or in the
student's turn, where the environment samples the token from the base model at the student
temperature (0.05). A turn ends when its decoded text ends with the separator "\\n\\n": the
environment then writes the next speaker's tag ("Student:" after a teacher turn, "Teacher:"
after a student turn), so neither the agent nor a model that would name another speaker
next can stall the chat, and the tag is never an agent action (an empty teacher turn is the
separator alone). A student turn also ends after `max_reply_tokens` (once its text no longer
ends in the first part of the separator), when the environment writes the whole hand-back
"\\n\\nTeacher:" itself; with `max_turn_tokens` > 0 a teacher turn that reaches that many
tokens is handed over the same way ("\\n\\nStudent:", written by the environment, no agent
action). Each finished student reply pays (s + 1)/2 with s its sentiment (or what a given
`reward` function returns for it). A reply cut off by
the end of the episode is scored as it stands if it has any content. The episode ends
(truncated) when the transcript holds `length` tokens.

Help (docs/design.md, "Pessimistic bases"): when the base policy has an extra action after the
vocabulary (`num_actions == vocab_size + 1`, a pessimistic imitator), that action asks the
`demonstrator` to write instead: it is called as `demonstrator(env, i)` and returns the
token ids to write (one token, or the rest of the teacher turn); they are marked in
`env.helped`. A base policy with an `observe(writers)` method is told, before every step,
who wrote each token (1 agent, 2 environment, 3 demonstrator).

The API follows Gymnasium's vector form: `reset(*, seed, options) -> (obs, info)` and
`step(actions) -> (obs, reward, terminated, truncated, info)`, with tensors of leading
size N; `actions` is read only where `obs["agent_turn"]` is True.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from klbudget.base.protocol import (
    WRITER_AGENT,
    WRITER_DEMONSTRATOR,
    WRITER_ENV,
    BasePolicy,
    BaseStep,
    help_action,
)
from klbudget.core.sampling import sample_categorical
from klbudget.envs.format import ChatFormat
from klbudget.rewards.sentiment import reply_reward

SPEAKERS = ("prompt", "agent", "env")


class RewardError(ValueError):
    """A reward function that did not return one finite number per reply."""


PROMPT, AGENT, ENV = 0, 1, 2


class TokenText:
    """Decoded text of single tokens, for turn detection on text (never on token ids).

    Byte-level BPE can split a multi-byte character across tokens, so per-token text is only
    used to find the ASCII tags at the end of a turn; rewards use the full decode.
    """

    def __init__(self, tokenizer, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        n = min(vocab_size, len(tokenizer))
        self.table = [tokenizer.decode([i]) for i in range(n)] + [""] * (vocab_size - n)

    def __getitem__(self, token_id: int) -> str:
        return self.table[token_id]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))


@dataclass
class Conversation:
    """Book-keeping of one conversation (plain Python; the tensors live in the env)."""

    speaker: int = AGENT  # whose turn it is: AGENT or ENV
    turn_text: str = ""  # decoded text of the current turn so far (tag detection)
    turn_ids: list[int] = field(default_factory=list)  # ids of the current turn
    forced: list[int] = field(default_factory=list)  # tokens the env must write next
    turn_start: int = 0  # index of the current turn's first token
    helping: bool = False  # the forced tokens are the demonstrator's (a help step)
    opening: str = ""  # the prompt's words of this (first) teacher turn: ChatFormat.opening


# What an episode's replies earn together: the sum of their pay ("reply": every reply pays,
# so more replies pay more) or its mean ("mean": the k-th reply pays the change in the
# running mean, so an episode's return is the mean pay of its replies, however many).
REWARD_PER = ("reply", "mean")


class ChatEnv:
    """Batched chat environment over a `BasePolicy` (see module docstring)."""

    def __init__(
        self,
        base: BasePolicy,
        tokenizer,
        sentiment: Callable[[Sequence[str]], list[float]] | None,
        *,
        n_envs: int,
        length: int,
        chat: ChatFormat | None = None,
        student_temperature: float = 0.05,
        max_reply_tokens: int = 48,
        max_turn_tokens: int = 0,
        device: str | torch.device = "cpu",
        demonstrator: Callable[[ChatEnv, int], list[int]] | None = None,
        prompts: Sequence[str] = (),
        reward: Callable[[Sequence[str]], Sequence[float]] | None = None,
        reward_per: str = "reply",
    ) -> None:
        if reward_per not in REWARD_PER:
            raise ValueError(f"reward_per must be one of {REWARD_PER}, got {reward_per!r}")
        self.reward_per = reward_per
        self.base = base
        self.help_action = help_action(base)
        if self.help_action is not None and demonstrator is None:
            raise ValueError("the base policy has a help action but no demonstrator was given")
        self.demonstrator = demonstrator
        self._observe = getattr(base, "observe", None)
        self.chat = chat or ChatFormat()
        self.text = TokenText(tokenizer, base.vocab_size)
        if sentiment is None and reward is None:
            raise ValueError("ChatEnv needs a sentiment model or a reward function")
        self.sentiment = sentiment
        self.reward = reward
        self.n_envs = n_envs
        self.length = length
        self.student_temperature = student_temperature
        self.max_reply_tokens = max_reply_tokens
        self.max_turn_tokens = max_turn_tokens
        self.device = torch.device(device)
        self.prompt_ids = self.text.encode(self.chat.prompt)
        # (format, ids) of every prompt an episode batch may start from (env.prompts).
        self._prompts = [(self.chat, self.prompt_ids)] + [
            (dataclasses.replace(self.chat, prompt=p), self.text.encode(p)) for p in prompts
        ]
        self.to_teacher_ids = self.text.encode(self.chat.to_teacher)
        self.to_student_ids = self.text.encode(self.chat.to_student)
        # The tags as they tokenize after the separator (BPE may split a tag differently alone).
        self.teacher_tag_ids = self._after_separator(self.chat.teacher_tag)
        self.student_tag_ids = self._after_separator(self.chat.student_tag)
        longest = max(len(ids) for _, ids in self._prompts)
        if longest >= length:
            raise ValueError(
                f"env.length = {length}: must be longer than the prompt ({longest} tokens)"
            )
        if length > base.max_length:
            raise ValueError(
                f"env.length = {length}: must be at most the model's {base.max_length} positions"
            )
        # Student sampling never ends the document: the hand-back is the only way out.
        self._banned = [t for t in {getattr(tokenizer, "eos_token_id", None)} if t is not None]
        self._tail = 4 * max(len(self.chat.to_student), len(self.chat.to_teacher))
        self.generator = torch.Generator(device="cpu")
        self._last: BaseStep | None = None

    # -- Gymnasium-style API -------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.generator.manual_seed(seed)
        n = self.n_envs
        if len(self._prompts) > 1:  # one prompt for the whole batch: rows stay in lockstep
            k = int(torch.randint(len(self._prompts), (1,), generator=self.generator))
            self.chat, self.prompt_ids = self._prompts[k]
        self.ids = torch.empty(n, self.length, dtype=torch.long)
        self.speaker = torch.empty(n, self.length, dtype=torch.long)
        self.helped = torch.zeros(n, self.length, dtype=torch.bool)
        t0 = len(self.prompt_ids)
        self.ids[:, :t0] = torch.tensor(self.prompt_ids)
        self.speaker[:, :t0] = PROMPT
        self.t = t0
        self.convs = [Conversation(turn_start=t0, opening=self.chat.opening) for _ in range(n)]
        self.replies: list[list[tuple[int, str]]] = [[] for _ in range(n)]
        self._paid = [0.0] * n  # Σ of what each row's replies earned (reward_per = "mean")
        self.teacher_turns: list[list[str]] = [[] for _ in range(n)]  # completed, content
        self._last = self.base.reset(self.ids[:, :t0].to(self.device), capacity=self.length)
        return self._obs(), {}

    def step(self, actions: Tensor):
        if self._last is None or self.t >= self.length:
            raise RuntimeError("episode is over: call reset()")
        n = self.n_envs
        agent_turn = self.agent_turn()
        student_tok = self._sample_student(self._last.env_logits)
        # The per-row work below reads and writes Python lists, turned into tensors once:
        # indexing a tensor element by element costs more than the rest of the loop.
        toks = torch.where(agent_turn, actions.to(torch.long).cpu(), student_tok).tolist()
        agent_rows = agent_turn.tolist()
        reward = torch.zeros(n)
        finished: list[tuple[int, int]] = []  # (row, reply start) whose reply just ended
        writers = [WRITER_ENV] * n
        helped = [False] * n
        speakers = [ENV] * n
        for i, conv in enumerate(self.convs):
            if agent_rows[i] and self.help_action is not None and toks[i] == self.help_action:
                assert self.demonstrator is not None
                conv.forced = list(self.demonstrator(self, i))
                if not conv.forced:
                    raise RuntimeError("the demonstrator wrote nothing for a help step")
                conv.helping = True
            if conv.forced:
                toks[i] = int(conv.forced.pop(0))
            tok = toks[i]
            if conv.speaker == AGENT:
                writers[i] = WRITER_DEMONSTRATOR if conv.helping else WRITER_AGENT
                helped[i] = conv.helping
                speakers[i] = AGENT
                conv.helping = bool(conv.forced) and conv.helping
            conv.turn_ids.append(tok)
            # Only the tail is needed to spot a hand-over at the end of the turn.
            conv.turn_text = (conv.turn_text + self.text[tok])[-self._tail :]
            if conv.speaker == AGENT:
                if conv.turn_text.endswith(self.chat.to_student):
                    turn = conv.opening + self.text.decode(conv.turn_ids)
                    self.teacher_turns[i].append(self.chat.teacher_content(turn))
                    self._switch(conv, ENV)
                elif not conv.forced and conv.turn_text.endswith(self.chat.separator):
                    # The teacher's turn is over; the student speaks next (the tag is the
                    # environment's, not an action, so it costs no KL).
                    conv.forced = list(self.student_tag_ids)
                elif (
                    not conv.forced
                    and self.max_turn_tokens
                    and len(conv.turn_ids) >= self.max_turn_tokens
                    and not self._opens_separator(conv.turn_text)
                ):
                    # Too long: the environment hands the turn over (a turn that ends in
                    # the first part of the separator is left to finish it).
                    conv.forced = list(self.to_student_ids)
            elif not conv.forced:
                if conv.turn_text.endswith(self.chat.to_teacher):
                    finished.append((i, conv.turn_start))
                    self._switch(conv, AGENT)
                elif conv.turn_text.endswith(self.chat.separator):
                    # The reply is over; the teacher speaks next, whatever name the model
                    # would have written after the separator.
                    conv.forced = list(self.teacher_tag_ids)
                elif len(conv.turn_ids) >= self.max_reply_tokens and not self._opens_separator(
                    conv.turn_text
                ):
                    # Too long (a reply that ends in the first part of the separator is left
                    # to finish it or go on: a hand-back written after it would double it).
                    conv.forced = list(self.to_teacher_ids)
        tokens = torch.tensor(toks, dtype=torch.long)
        self.ids[:, self.t] = tokens
        self.speaker[:, self.t] = torch.tensor(speakers, dtype=torch.long)
        self.helped[:, self.t] = torch.tensor(helped)
        self.t += 1
        done = self.t >= self.length
        if done:  # a reply cut off by the end of the episode is scored as it stands
            finished += [(i, c.turn_start) for i, c in enumerate(self.convs) if c.speaker == ENV]
        self._pay(finished, reward)
        truncated = torch.full((n,), done)
        terminated = torch.zeros(n, dtype=torch.bool)
        if not done:
            if self._observe is not None:
                self._observe(torch.tensor(writers, dtype=torch.long))
            self._last = self.base.step(tokens.to(self.device))
        info = {"tokens": tokens}
        return self._obs(), reward, terminated, truncated, info

    # -- helpers -------------------------------------------------------------------------
    def _after_separator(self, tag: str) -> list[int]:
        sep, full = (
            self.text.encode(self.chat.separator),
            self.text.encode(self.chat.separator + tag),
        )
        if full[: len(sep)] == sep and self.text.decode(full[len(sep) :]) == tag:
            return full[len(sep) :]
        return self.text.encode(tag)

    def _opens_separator(self, text: str) -> bool:
        sep = self.chat.separator
        return any(text.endswith(sep[:j]) for j in range(1, len(sep)))

    def agent_turn(self) -> Tensor:
        """(N,) True where the next token is the agent's."""
        return torch.tensor([c.speaker == AGENT and not c.forced for c in self.convs])

    def _obs(self) -> dict[str, Tensor]:
        assert self._last is not None
        pos = torch.full((self.n_envs,), self.t / self.length)
        return {
            "features": self._last.features,
            "base_logp": self._last.logp,
            "position": pos,
            "agent_turn": self.agent_turn(),
        }

    def _switch(self, conv: Conversation, speaker: int) -> None:
        conv.speaker = speaker
        conv.turn_text = ""
        conv.turn_ids = []
        conv.opening = ""
        conv.turn_start = self.t + 1

    def _sample_student(self, env_logits: Tensor) -> Tensor:
        """(N,) the student's next token where the student writes the next token itself (0
        elsewhere). One uniform is drawn for every row whoever speaks, so a conversation's
        draws do not depend on the others'; only the student's rows are computed."""
        n = env_logits.shape[0]
        u = torch.rand((n, 1), generator=self.generator)
        out = torch.zeros(n, dtype=torch.long)
        who = [i for i, c in enumerate(self.convs) if c.speaker != AGENT and not c.forced]
        rows = torch.tensor(who, dtype=torch.long)
        if who:
            logits = env_logits[rows.to(env_logits.device)].float().cpu() / self.student_temperature
            if self._banned:
                logits[:, self._banned] = -torch.inf
            out[rows] = sample_categorical(torch.log_softmax(logits, -1), u=u[rows])
        return out

    def _pay(self, finished: list[tuple[int, int]], reward: Tensor) -> None:
        if not finished:
            return
        texts, rows = [], []
        for i, start in finished:
            ids = self.ids[i, start : self.t].tolist()
            content = self.text.decode(ids)
            if content.endswith(self.chat.to_teacher):
                content = content[: -len(self.chat.to_teacher)]
            content = content.strip()
            if content or self.t < self.length:
                texts.append(content)
                rows.append(i)
        for i, text, r in zip(rows, texts, self.pay(texts), strict=True):
            if self.reward_per == "mean":  # the running mean's change: Σ = the final mean
                k = len(self.replies[i])
                before = self._paid[i] / k if k else 0.0
                self._paid[i] += r
                r = self._paid[i] / (k + 1) - before
            reward[i] += r
            self.replies[i].append((self.t, text))

    def pay(self, replies: list[str]) -> list[float]:
        """What each finished student reply earns: ``reward(replies)`` when the environment
        was given one, else (s + 1)/2 of each reply's sentiment s."""
        if not replies:
            return []
        if self.reward is None:
            return [reply_reward(s) for s in self.sentiment(replies)]
        paid = [float(r) for r in self.reward(replies)]
        if len(paid) != len(replies) or not all(math.isfinite(r) for r in paid):
            raise RewardError(
                f"the reward function returned {len(paid)} values for {len(replies)} replies"
                f"{'' if len(paid) != len(replies) else ', not all finite'}: one finite float "
                "per reply is needed"
            )
        return paid

    def empty_share(self) -> float:
        """The share of the episode's completed teacher turns so far that were empty, over
        all conversations (0 with none completed): the live count the trainer logs; the
        records' own measure is `klbudget.evaluation.metrics.empty_turn_fraction`."""
        turns = [c for row in self.teacher_turns for c in row]
        return sum(c == "" for c in turns) / len(turns) if turns else 0.0

    def transcript(self, i: int) -> str:
        """Decoded transcript of conversation i so far."""
        return self.text.decode(self.ids[i, : self.t].tolist())
