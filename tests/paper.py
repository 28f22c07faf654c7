"""What the paper's text holds, for checking what the course says about it (imported by the tests
as a plain module, like utils.py).

Grcić, Grubišić & Šegvić, *Densely connected normalizing flows*, NeurIPS 2021 (arXiv:2106.04627).
The facts below were read from the paper's text: the abstract, Secs. 1–2 (eqs. 1–15, Example 1,
Figs. 1–3) and the appendices A–G (eqs. 16–21, Figs. 6–10). The experimental sections (Sec. 3 on,
Tables 1–3) are cited only for Table 1's DenseFlow results. ``QUOTES`` are the short passages the
course quotes word for word, each with where it stands.

A sentence of the course that says "the paper …" must either cite where (a section, equation,
example, figure, appendix or table that exists) or say that the statement is someone else's: the
official code or checkpoints (``docs/official.md``), our derivation or reading, or that the paper
does not say it. Every quotation in such a sentence must be one of ``QUOTES`` (an ellipsis may
stand for left-out words).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["QUOTES", "Citation", "citations", "paper_sentence_problems", "sentences"]

SECTIONS = {
    "1": "Introduction",
    "2": "Densely connected normalizing flows",
    "2.1": "Normalizing flows with cross-unit coupling",
    "2.2": "Image-oriented architecture",
    "3": "Experiments (cited for Table 1 only)",
}
APPENDICES = {"A": "Limitations", "B": "Environmental impact", "C": "Training details",
              "D": "Proofs (eqs. 16–21)", "E": "Evidence against training set memorization",
              "F": "Implementation", "G": "More samples"}  # fmt: skip
# Where each numbered item stands: a section or an appendix.
EQUATIONS = {n: "1" for n in (1, 2)} | {n: "2.1" for n in range(3, 14)} | {14: "2.2", 15: "2.2"}
EQUATIONS |= {n: "D" for n in range(16, 22)}
FIGURES = {1: "2.1", 2: "2.2", 3: "2.2", 6: "E", 7: "G", 8: "G", 9: "G", 10: "G"}
EXAMPLES = {1: "2.1"}
TABLES = {1: "3"}  # DenseFlow-74-10: CIFAR-10 2.98, ImageNet32 3.63, ImageNet64 3.35, CelebA 1.99

QUOTES = {
    "the bijectivity constraint limits the model width": "abstract",
    "Properties of the model (e.g. efficient sampling, ability to evaluate likelihood etc.) "
    "directly depend on the definition of $p_\\theta(x)$, or decision to avoid it": "Sec. 1",
    "long mixing times": "Sec. 1",
    "powerful but slow sample generation": "Sec. 1",
    "often do not span the entire training distribution support": "Sec. 1",
    "inability to evaluate the likelihood": "Sec. 1",
    "subjects to some known distribution $p^*(e_i)$, e.g. a multivariate Gaussian": "Sec. 2.1",
    "approximates the product of the target distributions": "Sec. 2.1",
    "We do not have a guarantee that $p(z_i) = p(z_i, e_i)/p^*(e_i)$.": "Appendix D",
    "Proof of Equation (5)": "Appendix D",
}

PAPER = re.compile(r"\b[Tt]he paper\b")
# Someone else's statement: the official code or checkpoints, our own work, or the paper's silence.
ELSEWHERE = re.compile(
    r"official (?:code|implementation|checkpoints?|model|scripts?|evaluation)|released checkpoints"
    r"|docs/official\.md|\bour (?:own )?(?:derivation|addition|reading|argument)"
    r"|\bnot in the paper\b|\bthe paper does not\b|\bthe paper's text does not\b",
    re.IGNORECASE,
)
_NUM = r"(\d+(?:\.\d+)?)"
_RANGE = r"(?:\s*(?:[–—-]|to|and)\s*\(?" + _NUM + r"\)?)?"
_PATTERNS = {
    "section": re.compile(r"\bSec(?:tion|s?\.)\s*" + _NUM + _RANGE),
    "equation": re.compile(
        r"\b[Ee]q(?:uation)?s?\.?\s*\("
        + _NUM
        + r"\)"
        + _RANGE
        + r"|\b[Ee]q(?:uation)?s?\.?\s+"
        + _NUM
        + _RANGE
    ),  # fmt: skip
    "example": re.compile(r"\bExample\s+" + _NUM),
    "figure": re.compile(r"\bFig(?:ure|s?\.)\s*" + _NUM + _RANGE),
    "appendix": re.compile(r"\bAppendix\s+([A-G]|[H-Z])\b"),
    "table": re.compile(r"\bTable\s+" + _NUM),
}
_KNOWN = {"section": SECTIONS, "equation": EQUATIONS, "example": EXAMPLES, "figure": FIGURES,
          "appendix": APPENDICES, "table": TABLES}  # fmt: skip
# Sentence ends: a full stop, ! or ? before a capital or markup, not after an abbreviation.
_SENTENCE_END = re.compile(
    r"(?<=[.!?])(?<!\bSec\.)(?<!\bSecs\.)(?<![Ee]q\.)(?<![Ee]qs\.)(?<!\bFig\.)(?<!\bFigs\.)"
    r"(?<!\bal\.)(?<!\bcf\.)(?<!\bvs\.)(?<!e\.g\.)(?<!i\.e\.)\s+(?=[A-Z*(\[`$])"
)
_BLOCK = re.compile(r"\n\s*\n|\n(?=\s*(?:[*-] |\d+\. |\||#))")
_QUOTED = re.compile(r'"([^"\n]{3,}?)"|“([^”\n]{3,}?)”')


@dataclass(frozen=True)
class Citation:
    kind: str
    label: str

    @property
    def exists(self) -> bool:
        key = (
            int(float(self.label))
            if self.kind in ("equation", "figure", "example", "table")
            else self.label
        )
        return key in _KNOWN[self.kind] and (self.kind != "equation" or "." not in self.label)


def citations(sentence: str) -> list[Citation]:
    """Every section, equation, example, figure, appendix and table the sentence cites (a range
    such as ``eqs. (16)–(21)`` gives its two ends)."""
    found = []
    for kind, pattern in _PATTERNS.items():
        for match in pattern.finditer(sentence):
            found += [Citation(kind, label) for label in match.groups() if label]
    return found


def sentences(text: str) -> list[str]:
    """The sentences of markdown text, list items and table rows apart, each on one line."""
    out = []
    for block in _BLOCK.split(text):
        out += [" ".join(s.split()) for s in _SENTENCE_END.split(block) if s.strip()]
    return out


def _normalised(text: str) -> str:
    return " ".join(text.replace("\\,", " ").split())


def quote_problem(quote: str) -> str | None:
    """None if ``quote`` is one of ``QUOTES`` (its pieces around an ellipsis in order), else why."""
    pieces = [_normalised(p) for p in re.split(r"\s*(?:…|\.\.\.)\s*", quote) if p.strip()]
    for recorded in QUOTES:
        text, at = _normalised(recorded), 0
        for piece in pieces:
            at = text.find(piece, at)
            if at < 0:
                break
            at += len(piece)
        else:
            return None
    return f"quotes {quote!r}, which is not among the paper's passages recorded in tests/paper.py"


def paper_sentence_problems(text: str) -> list[str]:
    """The sentences that say "the paper" without citing where (or citing what does not exist),
    without saying the statement is someone else's, or quoting what the paper does not say."""
    problems = []
    for sentence in sentences(text):
        if not PAPER.search(sentence):
            continue
        cited = citations(sentence)
        missing = [c for c in cited if not c.exists]
        for c in missing:
            problems.append(
                f"cites {c.kind} {c.label}, which the paper does not have: {sentence!r}"
            )
        if not cited and not ELSEWHERE.search(sentence):
            problems.append(f"says 'the paper' without citing where or whose it is: {sentence!r}")
        for match in _QUOTED.finditer(sentence):
            quote = match.group(1) or match.group(2)
            if len(quote.split()) >= 2 and (problem := quote_problem(quote)):
                problems.append(f"{problem}: {sentence!r}")
    return problems
