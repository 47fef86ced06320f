"""Display of untrusted text: escaped markup, visible control characters."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from klbudget.report.escape import html_attr, html_text, visible


def test_markup_is_escaped() -> None:
    assert html_text("<script>alert(1)</script>") == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert html_text("</div>\"'&") == "&lt;/div&gt;&quot;&#x27;&amp;"


def test_control_characters_become_visible_escapes() -> None:
    assert html_text("a\x07b") == 'a<span class="ctl">\\x07</span>b'
    assert html_text("a\nb") == 'a<span class="ctl">↵</span><br>b'
    assert html_text("\x00\t\r") == (
        '<span class="ctl">\\x00</span><span class="ctl">\\t</span><span class="ctl">\\r</span>'
    )
    # Bidi override, zero-width space, line separator, lone surrogate.
    assert visible("\u202e\u200b\u2028\ud800") == "\\u202e\\u200b\\u2028\\ud800"
    assert visible("\U000e0001") == "\\U000e0001"
    assert visible("héllo ✓ π‖β") == "héllo ✓ π‖β"  # ordinary text is kept as is


def test_visible_limit_and_attr() -> None:
    assert visible("abcdef", limit=4) == "abc…"
    assert html_attr('x" onload="y\n') == "x&quot; onload=&quot;y↵"


@given(st.text(alphabet=st.characters(exclude_categories=())))  # surrogates too
def test_output_never_contains_markup_or_raw_controls(text: str) -> None:
    out = html_text(text)
    stripped = out.replace('<span class="ctl">', "").replace("</span>", "").replace("<br>", "")
    assert "<" not in stripped and ">" not in stripped and '"' not in stripped
    # No control, format, surrogate or line-separator character survives as itself.
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in stripped)
    out.encode("utf-8")  # lone surrogates were escaped, so the page can be written
