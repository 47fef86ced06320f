"""Safe display of text a model wrote.

Everything from a run folder (token texts, class names, config values, folder names) is
untrusted. In HTML it is escaped with :func:`html.escape`, and characters that would be
invisible or would change the layout (control characters, bidi overrides, zero-width
characters, line separators, lone surrogates) are shown as visible escapes such as `\\x07`
or `\\u202e`. A newline is shown as ↵ followed by a line break.
"""

from __future__ import annotations

import html
import unicodedata

# Unicode categories shown as escapes: controls, format characters (bidi overrides,
# zero-width), surrogates (cannot even be encoded as UTF-8), private use, unassigned,
# and line/paragraph separators (they break lines without looking like anything).
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
NEWLINE_MARK = "↵"


def is_hidden(ch: str) -> bool:
    """True for a character that must be shown as an escape rather than as itself."""
    return unicodedata.category(ch) in _HIDDEN_CATEGORIES


def char_escape(ch: str) -> str:
    """Visible escape of one hidden character: \\t, \\r, \\x07, \\u202e, \\U000e0001."""
    code = ord(ch)
    if ch == "\n":
        return NEWLINE_MARK
    if ch == "\t":
        return "\\t"
    if ch == "\r":
        return "\\r"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(text: str, limit: int | None = None) -> str:
    """Plain text with every hidden character (newline included) replaced by its escape;
    cut to `limit` characters with an ellipsis. For plot labels and HTML attributes."""
    out = "".join(char_escape(c) if c == "\n" or is_hidden(c) else c for c in text)
    if limit is not None and len(out) > limit:
        out = out[: max(limit - 1, 0)] + "…"
    return out


def html_text(text: str) -> str:
    """HTML for untrusted text: escaped, hidden characters as `<span class="ctl">` escapes,
    a newline as ↵ plus `<br>`. The result contains no markup from `text` itself."""
    if text.isprintable():  # fast path: no hidden character, no newline
        return html.escape(text, quote=True)
    parts: list[str] = []
    for ch in text:
        if ch == "\n":
            parts.append(f'<span class="ctl">{NEWLINE_MARK}</span><br>')
        elif is_hidden(ch):
            parts.append(f'<span class="ctl">{html.escape(char_escape(ch))}</span>')
        else:
            parts.append(html.escape(ch, quote=True))
    return "".join(parts)


def html_attr(text: str) -> str:
    """Untrusted text for inside a double-quoted attribute value (escapes, then quoting)."""
    return html.escape(visible(text), quote=True)
