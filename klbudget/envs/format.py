"""The teacher/student chat format (SYSTEM.md §2, "Transcript").

A transcript is a fixed prompt that ends inside a teacher turn, then alternating turns:

    <prompt ...>Teacher: Hello there.

    Student: hi!

    Teacher:

A turn's *content* is the text after its tag up to the hand-over (separator + the other
speaker's tag). Turns are detected on decoded text, never by matching token ids: with
byte-level BPE the tokens of a prefix are not always a prefix of the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PROMPT = (
    "The following is a conversation between a teacher and a student. The teacher helps "
    "the student and the student replies.\n\n"
    "Student: Hi! Can you help me with something?\n\n"
    "Teacher:"
)


@dataclass(frozen=True)
class ChatFormat:
    """Tags and separator of the chat. Defaults follow the paper's teacher/student set-up."""

    teacher_tag: str = "Teacher:"  # the agent writes after this tag
    student_tag: str = "Student:"  # the environment writes after this tag
    separator: str = "\n\n"  # between turns
    prompt: str = DEFAULT_PROMPT  # must end with the teacher tag

    def __post_init__(self) -> None:
        if not self.prompt.endswith(self.teacher_tag):
            raise ValueError(f"the prompt must end with the teacher tag {self.teacher_tag!r}")

    @property
    def to_student(self) -> str:
        """Text that ends a teacher turn and hands over to the student."""
        return self.separator + self.student_tag

    @property
    def to_teacher(self) -> str:
        """Text that ends a student turn and hands back to the teacher."""
        return self.separator + self.teacher_tag

    def teacher_content(self, turn_text: str) -> str:
        """Content of a teacher turn given the text written after the teacher tag."""
        if turn_text.endswith(self.to_student):
            turn_text = turn_text[: -len(self.to_student)]
        return turn_text.strip()

    def is_empty_teacher_turn(self, turn_text: str) -> bool:
        """SYSTEM.md §2 "Empty response", defined by content so it holds for every tokenizer."""
        return self.teacher_content(turn_text) == ""

    def render(self, turns: list[tuple[str, str]]) -> str:
        """Render `[(speaker, content), ...]` (speaker 'teacher'|'student') after the prompt.

        The result always ends with the tag of the speaker who talks next.
        """
        out = [self.prompt]
        for speaker, content in turns:
            body = f" {content}" if content else ""
            nxt = self.to_student if speaker == "teacher" else self.to_teacher
            out.append(body + nxt)
        return "".join(out)

    def split_turns(self, text: str) -> list[tuple[str, str]]:
        """Inverse of :meth:`render` on a transcript that starts with the prompt.

        Returns `[(speaker, content), ...]`; a trailing unfinished turn is included with its
        partial content.
        """
        if not text.startswith(self.prompt):
            raise ValueError("transcript does not start with the prompt")
        rest = text[len(self.prompt) :]
        turns: list[tuple[str, str]] = []
        speaker = "teacher"
        while True:
            handover = self.to_student if speaker == "teacher" else self.to_teacher
            i = rest.find(handover)
            if i < 0:
                turns.append((speaker, rest.strip()))
                return turns
            turns.append((speaker, rest[:i].strip()))
            rest = rest[i + len(handover) :]
            speaker = "student" if speaker == "teacher" else "teacher"
            if not rest:
                return turns
