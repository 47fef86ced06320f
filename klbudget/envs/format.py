"""The teacher/student chat format (docs/design.md, "Transcript").

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


def prompt_problem(prompt: str, teacher_tag: str, student_tag: str, separator: str) -> str:
    """'' when ``prompt`` ends inside a teacher turn (its last tag is the teacher's and no
    hand-over follows it), else what is wrong."""
    i = prompt.rfind(teacher_tag)
    if i < 0:
        return f"the prompt must contain the teacher tag {teacher_tag!r}"
    tail = prompt[i + len(teacher_tag) :]
    if student_tag in tail or (separator and separator in tail):
        return (
            f"the prompt must end inside a teacher turn: with the teacher tag {teacher_tag!r} "
            "or with words after it, not after a separator or another tag"
        )
    return ""


@dataclass(frozen=True)
class ChatFormat:
    """Tags and separator of the chat. Defaults follow the paper's teacher/student set-up."""

    teacher_tag: str = "Teacher:"  # the agent writes after this tag
    student_tag: str = "Student:"  # the environment writes after this tag
    separator: str = "\n\n"  # between turns
    # ends inside a teacher turn: with the teacher tag, or with the first words of the turn
    # after it (the paper's prompt ends "Teacher: Do you")
    prompt: str = DEFAULT_PROMPT

    def __post_init__(self) -> None:
        problem = prompt_problem(self.prompt, self.teacher_tag, self.student_tag, self.separator)
        if problem:
            raise ValueError(problem)

    @property
    def opening(self) -> str:
        """The prompt's words of the first teacher turn, after its last teacher tag ('' when
        the prompt ends with the tag): part of that turn's content, so a first turn that
        continues "Do you" is not empty however soon it hands over."""
        return self.prompt[self.prompt.rfind(self.teacher_tag) + len(self.teacher_tag) :]

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
        """docs/design.md, "Empty response", defined by content so it holds for every tokenizer."""
        return self.teacher_content(turn_text) == ""

    def render(self, turns: list[tuple[str, str]]) -> str:
        """Render `[(speaker, content), ...]` (speaker 'teacher'|'student') after the prompt.

        The result always ends with the tag of the speaker who talks next. Only for a prompt
        that ends with the teacher tag (no :attr:`opening`).
        """
        if self.opening:
            raise ValueError("render needs a prompt that ends with the teacher tag")
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
        rest = self.opening + text[len(self.prompt) :]
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
