"""Find numbers that a notebook's prose states but none of its outputs prints.

The course's rule (issue 15): every number a markdown cell states about the notebook's own results is
printed by a code cell of the same notebook; figures from the literature carry their citation in the
same sentence. This module is the check; ``tests/test_notebook_claims.py`` runs it on every committed
notebook.

What counts as a stated number: decimals (0.088), integers of two or more digits (1,000; 52),
ratios (8.6×, 5–10×) and percentages (27 %). Not counted: LaTeX ($…$), code spans (`…`), shapes
(32×32), heading and list numbers, and references (seed 000, notebook 05, eq. 12, Algorithm 2, §4,
Table 1). A sentence that cites (an author with "et al." or "&", or a year 19xx/20xx) is exempt.

Sources: every text output of the notebook (stream text, ``text/plain`` and ``text/markdown`` of
results and displays, so ``display(Markdown(f"…"))`` counts). Figure titles do not. A stated number
with d decimals is found when some printed number rounds to it at d decimals (or, for a percentage,
some printed fraction times 100 does).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]*\$", re.S)
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
_LINK = re.compile(r"\]\([^)]*\)|https?://\S+")
_HEADING = re.compile(r"^\s{0,3}(#+\s*)?\d+(\.\d+)*[.)]\s", re.M)
_SHAPE = re.compile(r"\d+(?:\s*[×x]\s*\d+)+(?!\s*(?:faster|slower|more|fewer|cheaper|less|larger|smaller))(?=\b|[^\d.])")
_REF = re.compile(r"(?i)\b(?:seeds?|notebooks?|nb|eqs?\.?|equations?|algorithm|alg\.|table|fig\.?|figure|section|§|"
                  r"issue|cell|cells|step \d+ of|chapter|part)\s*\[?\d[\d\s,–\-/]*\]?")
_CITE = re.compile(r"et al\.?|\b[A-Z][a-zA-Z-]+ (?:&|and) [A-Z][a-zA-Z-]+\b|\b(?:19|20)\d\d\b")
# one number: 1,000 | 0.088 | 52 ; optional range "5–10"; optional suffix × or %
_NUM = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:\s*[–-]\s*(\d+(?:\.\d+)?))?\s*(×|%)?(?![\w])")
_OUTNUM = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?;:])\s+(?=[A-Z(*_])|\n\s*\n|\n\s*[-*]\s", text) if s.strip()]


def stated_numbers(markdown: str) -> list[tuple[str, float, int, bool]]:
    """(text, value, decimals, is_percent) for each number the prose states, citations removed."""
    text = _LINK.sub("]", _CODE.sub(" ", _MATH.sub(" ", markdown)))
    text = _HEADING.sub(" ", text)
    out = []
    for sent in _sentences(text):
        if _CITE.search(sent):
            continue
        sent = _REF.sub(" ", _SHAPE.sub(" ", sent))
        for m in _NUM.finditer(sent):
            whole, frac, upper, suffix = m.group(1), m.group(2) or "", m.group(3), m.group(4)
            parts = [(whole.replace(",", "") + frac, len(frac) - 1 if frac else 0)]
            if upper:
                parts.append((upper, len(upper.split(".")[1]) if "." in upper else 0))
            for s, d in parts:
                v = float(s)
                if d == 0 and not suffix and abs(v) < 10:
                    continue  # single-digit integers are not claims
                out.append((m.group(0).strip(), v, d, suffix == "%"))
    return out


def printed_numbers(nb: dict) -> list[float]:
    vals = []
    for c in nb.get("cells", []):
        for o in c.get("outputs", []):
            t = "".join(o.get("text", ""))
            data = o.get("data", {})
            t += "".join(data.get("text/plain", "")) + "".join(data.get("text/markdown", ""))
            for m in _OUTNUM.finditer(t):
                try:
                    vals.append(float(m.group(0).replace(",", "")))
                except ValueError:
                    pass
    return vals


def _found(v: float, d: int, pct: bool, printed: list[float]) -> bool:
    tol = 0.5 * 10 ** (-d) + 1e-9
    for y in printed:
        for cand in ((y, y * 100) if pct else (y, abs(y))):
            if abs(abs(cand) - v) <= tol:
                return True
    return False


def unsupported_claims(path: str | Path) -> list[str]:
    """'cell i: "text"' for every stated number no output of the notebook prints."""
    nb = json.loads(Path(path).read_text())
    printed = printed_numbers(nb)
    bad = []
    for i, c in enumerate(nb.get("cells", [])):
        if c.get("cell_type") != "markdown":
            continue
        for text, v, d, pct in stated_numbers("".join(c.get("source", ""))):
            if not _found(v, d, pct, printed):
                bad.append(f"cell {i}: {text!r}")
    return bad
