"""No user text makes the parser raise, and formatting what it parsed gives the same request back."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from lib_lorastack.syntax import format_request, parse_prompt

EXAMPLES = 100_000 if os.environ.get("CI") else 500

# Fragments that make tags likely, mixed with arbitrary unicode.
PIECES = st.sampled_from(
    ["<lora:", "<lyco:", "<hypernet:", ">", ":", "=", ",", "te=", "unet=", "dyn=", "lbw=", "w=", "lbwe=", "x=",
     "start=", "stop=", "step=", "-", "0.5", "1", "16", "-2", "1e3", "nan", "R", "U", "X", "X+0.5", "OUTALL",
     "ALL", "INS", "@", " ", "name", "ü", "キャラ", "[", "(", ".", "1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
     "1,1,1,1,1,1,1,1,1,1,1,1"]
)  # fmt: skip
TEXT = st.lists(st.one_of(PIECES, st.text(max_size=4)), max_size=24).map("".join)


@settings(max_examples=EXAMPLES, deadline=None)
@given(TEXT, st.text(max_size=30))
def test_parse_never_raises_and_round_trips(prompt: str, negative: str) -> None:
    request = parse_prompt(prompt, negative)
    for d in request.diagnostics:
        text = negative if d.source == "negative" else prompt
        assert 0 <= d.span[0] <= d.span[1] <= len(text)
    again = parse_prompt(format_request(request))
    assert again == request
    assert not again.errors
