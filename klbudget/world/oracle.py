"""τ inside the chat environment: exact log τ(next teacher token) for conversations in play.

`TauOracle(tm, num_actions)(env, rows)` reads each conversation's transcript so far, splits it
into turns with the chat format, and asks the token model for τ's next-token
distribution given the earlier turns and the current teacher turn's token prefix. Used to
let τ act (the demo's τ row) and to annotate the agent's tokens with KL(π_t‖τ_t).
"""

from __future__ import annotations

import torch
from torch import Tensor

from klbudget.envs.chat import ChatEnv
from klbudget.world.token_model import TeacherTokenModel


class TauOracle:
    def __init__(self, tm: TeacherTokenModel, num_actions: int) -> None:
        self.tm = tm
        self.num_actions = num_actions

    def __call__(self, env: ChatEnv, rows: Tensor) -> Tensor:
        """(R, A) float32 log τ over actions for the conversations `rows` (teacher's turn)."""
        histories, prefixes = [], []
        for i in rows.tolist():
            prefix = env.convs[i].turn_ids
            turns = env.chat.split_turns(env.transcript(i))
            # The current teacher turn, begun or not (at the start of the chat it is split as
            # an empty teacher turn), is the last split turn unless a student turn is.
            if turns and turns[-1][0] == "teacher":
                turns = turns[:-1]
            histories.append(turns)
            prefixes.append(list(prefix))
        logp = self.tm.next_token_logprobs_batch(histories, prefixes).float()
        out = torch.full((len(histories), self.num_actions), -torch.inf)
        v = min(self.num_actions, logp.shape[-1])
        out[:, :v] = logp[:, :v]
        return out

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
                notes.append(note)
            i = j
        record["turns"] = notes
