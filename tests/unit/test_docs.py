"""The README documents the closed set of reason codes; keep it equal to the code's."""

from __future__ import annotations

import re
from pathlib import Path

from api.reasons import REASON_DOCS, ReasonCode

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_reason_code_is_documented_once() -> None:
    assert set(REASON_DOCS) == set(ReasonCode)
    table = re.findall(r"^\| `([a-z_]+)` \|", README.read_text(encoding="utf-8"), re.MULTILINE)
    reason_rows = [code for code in table if code in {c.value for c in ReasonCode}]
    assert sorted(reason_rows) == sorted(c.value for c in ReasonCode)
