"""What can be read from Lean text before Lean sees it: the import block, the commands that
would run code while elaborating, and the name and statement of a `theorem`.

Everything here works on a token view of the text (comments, string contents and character
literals are not tokens), so a `#eval` inside a comment or a string is not a command, and a
command cannot hide in one. It is a lexer, not a parser: hand-written because no maintained
Python package lexes Lean 4, and it only has to tell identifiers, keywords and symbols from
comments and literals. It errs on the side of seeing a token: interpolated strings
(`s!"..."`, `m!"..."`) are scanned as code, since their `{...}` parts are terms.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# What the completion may not use unless the spec's `allow` names the group. Each group runs
# code while elaborating, or changes how later text (assay's own checks) is read.
FORBIDDEN: dict[str, frozenset[str]] = {
    # commands and terms that run arbitrary code (IO, or the elaborator's own monads)
    "eval": frozenset(
        {
            "#eval",
            "#eval!",
            "run_cmd",
            "run_elab",
            "run_meta",
            "run_tac",
            "by_elab",
            "eval%",
            "#guard",
            "#test",
            "#sample",
        }
    ),
    # new syntax and elaborators: they rewrite how later text parses and elaborates
    "syntax": frozenset(
        {
            "macro",
            "macro_rules",
            "syntax",
            "elab",
            "elab_rules",
            "declare_syntax_cat",
            "notation",
            "notation3",
            "infix",
            "infixl",
            "infixr",
            "prefix",
            "postfix",
            "binder_predicate",
            "simproc",
            "dsimproc",
            "simproc_decl",
            "dsimproc_decl",
            "declare_simp_like_tactic",
            "register_simp_attr",
            "register_option",
            "add_decl_doc",
        }
    ),
    "initialize": frozenset({"initialize", "builtin_initialize"}),
    # code the kernel or compiler trusts without a proof
    "unsafe": frozenset({"unsafe", "implemented_by", "extern"}),
    # new instances can change how assay's own check command elaborates
    "instance": frozenset({"instance"}),
    # evaluation by compiled code (Lean.ofReduceBool / Lean.ofReduceNat)
    "native_decide": frozenset(
        {"native_decide", "+native", "reduceBool", "ofReduceBool", "reduceNat", "ofReduceNat"}
    ),
}

# Options that weaken the kernel or reach into the compiler (`set_option NAME ...`).
_FORBIDDEN_OPTION = re.compile(r"^(debug|compiler|interpreter)\.")

# Attributes that only mark data (simp sets, reducibility, generated lemmas). Any other one may
# register code (a tactic, an elaborator, a norm_num or positivity extension, an aesop rule
# running a tactic): `attributes` in `allow` permits all.
SAFE_ATTRIBUTES = frozenset(
    {
        "simp",
        "simps",
        "ext",
        "reducible",
        "irreducible",
        "semireducible",
        "inline",
        "noinline",
        "specialize",
        "macro_inline",
        "refl",
        "symm",
        "trans",
        "mono",
        "gcongr",
        "fun_prop",
        "continuity",
        "measurability",
        "norm_cast",
        "push_cast",
        "nolint",
        "to_additive",
        "to_dual",
        "elab_as_elim",
        "match_pattern",
        "coe",
        "induction_eliminator",
        "cases_eliminator",
        "deprecated",
        "grind",
        "grind=",
        "grind→",
        "grind←",
        "local",
        "scoped",
        "field_simps",
        "bound",
        "nontriviality",
        "symm_simps",
        "mfld_simps",
        "pp_nodot",
        "class",
        "instance_reducible",
    }
)

GROUPS = frozenset([*FORBIDDEN, "options", "attributes"])
"""Every name `allow` may hold."""


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    line: int  # 1-based
    column: int  # 0-based, in characters


def _ident_start(ch: str) -> bool:
    if ch.isascii():
        return ch == "_" or ch.isalpha()
    if ch.isalpha():
        return ch not in "λΠΣ"
    return unicodedata.category(ch) in ("Ll", "Lu", "Lo", "Lm", "Lt") or "\u1d00" <= ch <= "\u1dbf"


def _ident_rest(ch: str) -> bool:
    if ch.isascii():
        return ch.isalnum() or ch in "_'!?"
    return (
        _ident_start(ch)
        or ch.isdigit()
        or ch in "'!?"
        or "\u2080" <= ch <= "\u209c"  # subscripts
        or "\u1d62" <= ch <= "\u1d6a"
        or ch == "ⁿ"
    )


# Matched at a position of the whole text, never on a copy of its rest (`text[i:]` at each
# `r` or `'` made tokenizing quadratic: seconds for 20,000 characters).
_RAW_STRING = re.compile(r'r(#*)"')
_CHAR = re.compile(r"'(\\.[^'\n]{0,16}|[^'\\])'")


def tokens(text: str, *, literals: bool = False) -> Iterator[Token]:
    """The tokens of Lean text, comments and literal contents left out (`literals`: string
    and character literals are tokens too, whole)."""
    i, n, line, col0 = 0, len(text), 1, 0

    def advance(to: int) -> None:
        nonlocal i, line, col0
        chunk = text[i:to]
        newlines = chunk.count("\n")
        if newlines:
            line += newlines
            col0 = i + chunk.rfind("\n") + 1
        i = to

    while i < n:
        ch = text[i]
        if ch.isspace():
            advance(i + 1)
            continue
        if text.startswith("--", i):
            end = text.find("\n", i)
            advance(n if end < 0 else end)
            continue
        if text.startswith("/-", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/-", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("-/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            advance(j)
            continue
        start_line, start_col = line, i - col0
        if ch == '"':
            interpolated = i > 0 and text[i - 1] == "!"
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if literals:
                yield Token(text[i : j + 1], start_line, start_col)
            elif interpolated:  # `s!"..{term}.."`: the terms are code
                yield from _shifted(tokens(text[i + 1 : j]), start_line, start_col + 1)
            advance(min(j + 1, n))
            continue
        raw = _RAW_STRING.match(text, i) if ch == "r" else None
        if raw is not None:
            hashes = len(raw[1])
            close = '"' + "#" * hashes
            end = text.find(close, i + 2 + hashes)
            stop = n if end < 0 else end + len(close)
            if literals:
                yield Token(text[i:stop], start_line, start_col)
            advance(stop)
            continue
        if ch == "'" and (i == 0 or not _ident_rest(text[i - 1])):
            m = _CHAR.match(text, i)
            if m:
                if literals:
                    yield Token(m[0], start_line, start_col)
                advance(m.end())
                continue
        if ch == "«":
            end = text.find("»", i)
            j = n if end < 0 else end + 1
            j = _ident_tail(text, j)
            yield Token(text[i:j], start_line, start_col)
            advance(j)
            continue
        if ch == "#" and i + 1 < n and text[i + 1].isalpha():
            j = i + 1
            while j < n and (_ident_rest(text[j]) or text[j] == "."):
                j += 1
            yield Token(text[i:j], start_line, start_col)
            advance(j)
            continue
        if ch == "+" and text.startswith("+native", i):
            yield Token("+native", start_line, start_col)
            advance(i + 7)
            continue
        if _ident_start(ch):
            j = _ident_tail(text, i + 1)
            word = text[i:j]
            if j < n and text[j] == "%":  # `eval%`-style term elaborators
                word, j = word + "%", j + 1
            yield Token(word, start_line, start_col)
            advance(j)
            continue
        if text.startswith("@[", i):
            yield Token("@[", start_line, start_col)
            advance(i + 2)
            continue
        yield Token(ch, start_line, start_col)
        advance(i + 1)


def _ident_tail(text: str, j: int) -> int:
    n = len(text)
    while j < n:
        dotted = text[j] == "." and j + 1 < n and (_ident_start(text[j + 1]) or text[j + 1] == "«")
        if _ident_rest(text[j]) or dotted:
            j += 1
        elif text[j] == "«":
            end = text.find("»", j)
            j = n if end < 0 else end + 1
        else:
            break
    return j


def _shifted(inner: Iterable[Token], line: int, column: int) -> Iterator[Token]:
    for token in inner:
        yield Token(
            token.text,
            token.line + line - 1,
            token.column + (column if token.line == 1 else 0),
        )


@dataclass(frozen=True, slots=True)
class Violation:
    group: str
    what: str
    line: int
    column: int

    def describe(self, line_offset: int = 0) -> str:
        return (
            f"line {self.line + line_offset}, col {self.column}: `{self.what}` is not allowed "
            f"(it runs code or changes how Lean reads what follows; allow: {self.group!r})"
        )


def _last_component(word: str) -> str:
    return word.rsplit(".", 1)[-1]


def violations(text: str, allow: Iterable[str] = ()) -> list[Violation]:
    """Uses of forbidden commands, options and attributes, in order."""
    allowed = set(allow)
    lookup = {word: group for group, words in FORBIDDEN.items() for word in words}
    found: list[Violation] = []
    toks = list(tokens(text))
    listed = -1  # the last token of the attribute lists read so far
    for k, tok in enumerate(toks):
        word = tok.text
        group = lookup.get(word)
        if group is None and lookup.get(_last_component(word)) == "native_decide":
            group = "native_decide"  # Lean.ofReduceBool, qualified or opened
        if group is not None and group not in allowed:
            found.append(Violation(group, word, tok.line, tok.column))
            continue
        if word == "native" and "native_decide" not in allowed and _assigns(toks, k):
            # `decide (config := { native := true })`, the older spelling of `decide +native`
            found.append(Violation("native_decide", "native :=", tok.line, tok.column))
        if word == "set_option" and k + 1 < len(toks) and "options" not in allowed:
            option = toks[k + 1].text
            if _FORBIDDEN_OPTION.match(option):
                found.append(Violation("options", f"set_option {option}", tok.line, tok.column))
        if word in ("@[", "attribute") and "attributes" not in allowed:
            if k <= listed:
                # Inside another attribute list, which no Lean parses: refused as it is, not
                # read again (each list read to its end made `@[@[@[...` quadratic).
                found.append(Violation("attributes", word, tok.line, tok.column))
                continue
            end, inside = _attribute_violations(toks, k, allowed)
            found.extend(inside)
            listed = end
    seen: set[tuple[int, int]] = set()
    unique = []
    for v in found:  # `attribute [instance]` is both an attribute and the instance keyword
        if (v.line, v.column) not in seen:
            seen.add((v.line, v.column))
            unique.append(v)
    return unique


def _assigns(toks: list[Token], k: int) -> bool:
    """Whether toks[k] is followed by `:=` (two tokens, adjacent)."""
    if k + 2 >= len(toks):
        return False
    colon, equals = toks[k + 1], toks[k + 2]
    return (
        colon.text == ":"
        and equals.text == "="
        and equals.line == colon.line
        and equals.column == colon.column + 1
    )


def _attribute_violations(
    toks: list[Token], k: int, allowed: set[str]
) -> tuple[int, list[Violation]]:
    """Where the attribute list of `@[...]` or `attribute [...]` at toks[k] ends (its `]`, or
    the last token), and its attributes that are not data-only."""
    j = k + 1
    out: list[Violation] = []
    if toks[k].text == "attribute":
        if j >= len(toks) or toks[j].text != "[":
            return k, out
        j += 1
    depth, expect_name = 0, True
    while j < len(toks):
        text = toks[j].text
        if text in "([{":
            depth += 1
        elif text in ")}":
            depth -= 1
        elif text == "]":
            if depth == 0:
                return j, out
            depth -= 1
        elif text == "," and depth == 0:
            expect_name = True
        elif expect_name and depth == 0 and text not in ("-", "local", "scoped"):
            expect_name = False
            name = text
            if name == "instance":
                if "instance" not in allowed:
                    out.append(
                        Violation("instance", "attribute instance", toks[j].line, toks[j].column)
                    )
            elif name not in SAFE_ATTRIBUTES and not name.startswith("grind"):
                out.append(Violation("attributes", f"@[{name}]", toks[j].line, toks[j].column))
        j += 1
    return len(toks) - 1, out


def sorry_ax_at(text: str) -> Token | None:
    """Where `sorryAx` (what `sorry` elaborates to) is written by hand, if anywhere."""
    for tok in tokens(text):
        if _last_component(tok.text) == "sorryAx":
            return tok
    return None


# -- header and theorem ----------------------------------------------------------------------

_IMPORT = re.compile(r"^\s*(public\s+)?(meta\s+)?import\s+\S")


@dataclass(frozen=True, slots=True)
class Split:
    imports: tuple[str, ...]
    """The import lines, stripped, in order (empty: the text has none)."""
    body: str
    body_line: int
    """The line of the text (1-based) on which `body` starts."""


def split_imports(text: str) -> Split:
    """The leading import block of `text` (blank lines and comments may sit between imports)
    and what follows it."""
    lines = text.split("\n")
    imports: list[str] = []
    last = -1
    in_block = False
    for number, line in enumerate(lines):
        stripped = line.strip()
        if in_block:
            if "-/" in stripped:
                in_block = False
            continue
        if not stripped or stripped.startswith("--"):
            continue
        if stripped.startswith("/-") and "-/" not in stripped[2:]:
            in_block = True
            continue
        if stripped.startswith("/-") and stripped.endswith("-/"):
            continue
        if _IMPORT.match(line):
            normal = " ".join(stripped.split())
            if normal not in imports:  # the same module twice is one import
                imports.append(normal)
            last = number
            continue
        break
    if not imports:
        return Split((), text, 1)
    return Split(tuple(imports), "\n".join(lines[last + 1 :]), last + 2)


_DECL = re.compile(
    r"^\s*(?:@\[[^\]]*\]\s*)?(?:(?:private|protected|noncomputable|nonrec)\s+)*"
    r"(theorem|lemma)\s+(«[^»]+»(?:\.[^\s:({\[]+)?|[^\s:({\[]+)"
)


@dataclass(frozen=True, slots=True)
class Statement:
    name: str
    text: str
    """The declaration up to its `:=`, as a command that Lean can elaborate with a `sorry`."""

    def with_name(self, name: str) -> str:
        return "theorem " + name + self.text[self.text.index(self.name) + len(self.name) :]


def parse_statement(theorem: str) -> Statement:
    """The name and statement of a spec's `theorem` (`theorem NAME ... :=`, with or without a
    proof after `:=`). `ValueError` when it is not one named theorem."""
    theorem = theorem[_comments_end(theorem) :]
    match = _DECL.match(theorem)
    if match is None:
        raise ValueError("`theorem` must be one `theorem NAME ... : STATEMENT` (or `lemma`)")
    cut = _top_level_assign(theorem)
    head = theorem[: cut if cut >= 0 else len(theorem)].rstrip()
    head = head[match.start(1) :]
    if head.startswith("lemma"):
        head = "theorem" + head[len("lemma") :]
    return Statement(match[2], head)


def _comments_end(text: str) -> int:
    """Where the leading comments and doc comments (`/-- ... -/`, `-- ...`) of `text` end."""
    i = 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif text.startswith("/-", i):
            depth, i = 1, i + 2
            while i < len(text) and depth:
                if text.startswith("/-", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("-/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        else:
            return i


def _top_level_assign(text: str) -> int:
    """Where the statement's `:=` is (the first one outside brackets, comments and strings)."""
    offsets = _line_offsets(text)
    depth = 0
    last: Token | None = None
    for tok in tokens(text):  # read only as far as the `:=`
        if (
            last is not None
            and last.text == ":"
            and depth == 0
            and tok.text == "="
            and tok.line == last.line
            and tok.column == last.column + 1
        ):
            return offsets[last.line - 1] + last.column
        if tok.text in "([{⟨":
            depth += 1
        elif tok.text in ")]}⟩":
            depth -= 1
        last = tok
    return -1


def _line_offsets(text: str) -> list[int]:
    offsets, total = [], 0
    for line in text.split("\n"):
        offsets.append(total)
        total += len(line) + 1
    return offsets


def same_tokens(a: str, b: str) -> bool:
    """Whether two texts are the same Lean tokens (whitespace and comments aside: `0<x` and
    `0 < x` are the same, `f ab` and `f a b` are not)."""
    return [t.text for t in tokens(a, literals=True)] == [t.text for t in tokens(b, literals=True)]


__all__ = [
    "FORBIDDEN",
    "GROUPS",
    "SAFE_ATTRIBUTES",
    "Split",
    "Statement",
    "Token",
    "Violation",
    "parse_statement",
    "same_tokens",
    "sorry_ax_at",
    "split_imports",
    "tokens",
    "violations",
]
