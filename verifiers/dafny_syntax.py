"""Dafny source as tokens and declarations: what the `dafny` verifier checks before it proves.

Hand-written, since no Python library parses Dafny: a tokeniser (nested block comments,
strings, verbatim strings, characters, attributes) and a shallow declaration parser that
finds modules, classes, methods, functions, lemmas and the rest, each with its signature, its
specification clauses and its body. It is not a full Dafny parser: it knows just enough to
find the constructs that let Dafny accept a claim without proving it (on tokens, never on
text in comments or strings), to compare a completion's specification with a reference's,
and to rewrite Dafny 4 syntax into the 2.x forms that prove the same thing. Dafny itself
parses the program after it; a program this parser misreads is at worst refused, never
passed on its word.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace


class DafnySyntaxError(ValueError):
    """Source this tokeniser cannot read (an unclosed comment or string)."""


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "id" (identifiers and keywords), "num", "str", "char", "op"
    text: str
    line: int
    col: int
    start: int
    end: int
    close: int = -1  # an opening bracket's: where its closing bracket starts


_OPS_TEXT = """<==> ==> <== ==# !=# :| :: := :- .. == != <= >= && || !! -> ~> --> => {: #[
++ -- < > ! + - * / % & | ^ ( ) [ ] { } , ; : . = @ # ? $ ~ `"""
_OPS = sorted(
    _OPS_TEXT.split(),
    key=len,
    reverse=True,
)
_OP = re.compile("|".join(re.escape(o) for o in _OPS))
_IDENT = re.compile(r"[A-Za-z_\\][A-Za-z0-9_'?\\]*")
_NUMBER = re.compile(r"0x[0-9A-Fa-f_]+|[0-9][0-9_]*(?:\.[0-9][0-9_]*)?")
_CHAR = re.compile(r"'(?:\\u[0-9A-Fa-f]{4}|\\U\{[0-9A-Fa-f_]+\}|\\.|[^'\\\n])'")
_SPACE = re.compile(r"\s+")


def tokenize(source: str) -> list[Token]:
    """Dafny tokens, comments and whitespace left out."""
    tokens: list[Token] = []
    i, n = 0, len(source)
    line, line_start = 1, 0

    def advance_lines(start: int, end: int) -> None:
        nonlocal line, line_start
        count = source.count("\n", start, end)
        if count:
            line += count
            line_start = source.rindex("\n", start, end) + 1

    while i < n:
        c = source[i]
        if c.isspace():
            m = _SPACE.match(source, i)
            assert m is not None
            advance_lines(i, m.end())
            i = m.end()
            continue
        if source.startswith("//", i):
            j = source.find("\n", i)
            i = n if j < 0 else j
            continue
        if source.startswith("/*", i):  # Dafny's block comments nest
            depth, j = 1, i + 2
            while depth:
                if j >= n:
                    raise DafnySyntaxError(f"line {line}: a comment is never closed")
                if source.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif source.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            advance_lines(i, j)
            i = j
            continue
        col = i - line_start + 1
        if c == '"' or source.startswith('@"', i):
            verbatim = c == "@"
            j = i + (2 if verbatim else 1)
            while True:
                if j >= n or (not verbatim and source[j] == "\n"):
                    raise DafnySyntaxError(f"line {line}: a string is never closed")
                if source.startswith('""' if verbatim else "\\", j):
                    j += 2
                elif source[j] == '"':
                    j += 1
                    break
                else:
                    j += 1
            tokens.append(Token("str", source[i:j], line, col, i, j))
            advance_lines(i, j)
            i = j
            continue
        if c == "'" and (m := _CHAR.match(source, i)):
            tokens.append(Token("char", m.group(), line, col, i, m.end()))
            i = m.end()
            continue
        if c.isdigit():
            m = _NUMBER.match(source, i)
            assert m is not None
            text = m.group()
            if text.endswith(".") or ".." in source[m.start() : m.end() + 1]:
                text = text.split(".")[0]  # `0..n`: a number, then `..`
            tokens.append(Token("num", text, line, col, i, i + len(text)))
            i += len(text)
            continue
        if m := _IDENT.match(source, i):
            tokens.append(Token("id", m.group(), line, col, i, m.end()))
            i = m.end()
            continue
        if m := _OP.match(source, i):
            tokens.append(Token("op", m.group(), line, col, i, m.end()))
            i = m.end()
            continue
        tokens.append(Token("op", c, line, col, i, i + 1))  # anything else: Dafny will say
        i += 1
    return _paired(tokens)


_CLOSERS = {"(": ")", "[": "]", "{": "}", "{:": "}", "#[": "]"}


def _paired(tokens: list[Token]) -> list[Token]:
    """The tokens, each opening bracket knowing where its closing one is: found once, so that
    every later look-up is a binary search, never a scan (hostile input stays linear)."""
    stack: list[int] = []
    closes: dict[int, int] = {}
    for j, t in enumerate(tokens):
        if t.text in _CLOSERS:
            stack.append(j)
        elif stack and t.text == _CLOSERS[tokens[stack[-1]].text]:
            closes[stack.pop()] = tokens[j].start
    for j, start in closes.items():
        tokens[j] = replace(tokens[j], close=start)
    return tokens


# -- declarations -------------------------------------------------------------------------------

CLAUSES = frozenset({"requires", "ensures", "reads", "modifies", "decreases"})
_YIELD = "yield"  # iterators: `yield requires`, `yield ensures`
METHODS = frozenset({"method", "lemma", "constructor", "colemma", "iterator"})
FUNCTIONS = frozenset({"function", "predicate", "copredicate"})
CONTAINERS = frozenset({"module", "class", "trait"})
OPAQUE = frozenset(
    {"datatype", "codatatype", "type", "newtype", "const", "var", "import", "export", "include"}
)
MODIFIERS = frozenset(
    {
        "ghost",
        "static",
        "abstract",
        "opaque",
        "protected",
        "twostate",
        "least",
        "greatest",
        "inductive",
        "replaceable",
        "private",
    }
)
DECL_START = METHODS | FUNCTIONS | CONTAINERS | OPAQUE | MODIFIERS
# Tokens after which an expression is complete, so that a `{` starts a body (not a set).
_KEYWORD_VALUES = frozenset({"true", "false", "null", "this", "old", "fresh", "allocated"})
_NOT_OPERANDS = frozenset(
    {"requires", "ensures", "reads", "modifies", "decreases", "invariant", "in", "then", "else"}
    | {"if", "while", "multiset", "set", "iset", "seq", "map", "imap", "returns", "case"}
    | {"forall", "exists", "var", "match", "calc", "assert", "assume", "return", "yield", "to"}
    | {"downto", "for"}
)


def ends_expression(tok: Token | None, before: Token | None = None) -> bool:
    """Whether an expression can end with `tok` (`before` is the token before it: a `|` after
    an operand closes a cardinality `|s|`; after an operator it opens one)."""
    if tok is None:
        return False
    if tok.kind in ("num", "str", "char"):
        return True
    if tok.kind == "id":
        return tok.text not in _NOT_OPERANDS
    if tok.text == "|":
        return before is not None and before.text != "|" and ends_expression(before)
    return tok.text in (")", "]", "}")


@dataclass(slots=True)
class Decl:
    """One declaration: a container (module, class, trait) with its members, a method-like
    (method, lemma, constructor, iterator) or function-like member with its clauses and body,
    or anything else (datatype, type, const, field, import) as a whole."""

    kind: str  # the declaring keyword: "method", "function", "class", "datatype", ...
    name: str
    path: tuple[str, ...]  # the names of the containers around it
    modifiers: tuple[str, ...]
    tokens: list[Token]  # all of it, attributes included
    header: list[Token] = field(default_factory=list)  # the signature, attributes left out
    clauses: list[tuple[str, list[Token]]] = field(default_factory=list)
    body: list[Token] | None = None
    by_method: list[Token] | None = None
    members: list[Decl] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, ...]:
        return (*self.path, self.kind, self.name)

    @property
    def line(self) -> int:
        return self.tokens[0].line if self.tokens else 0

    @property
    def callable(self) -> bool:
        return self.kind in METHODS or self.kind in FUNCTIONS

    def clause_texts(self, keyword: str) -> list[str]:
        return [text(toks) for kw, toks in self.clauses if kw == keyword]


def text(tokens: Iterable[Token]) -> str:
    """Tokens joined by single spaces: the whitespace-normalised form that comparisons use."""
    return " ".join(t.text for t in tokens)


def strip_attributes(tokens: list[Token]) -> list[Token]:
    out: list[Token] = []
    i = 0
    while i < len(tokens):
        if tokens[i].text == "{:":
            i = _matching(tokens, i) + 1
            continue
        out.append(tokens[i])
        i += 1
    return out


def _matching(tokens: list[Token], i: int) -> int:
    """The index of the bracket closing the one at `i` (or the last token)."""
    target = tokens[i].close
    if target >= 0:
        j = bisect.bisect_left(tokens, target, key=_start)
        if j < len(tokens) and tokens[j].start == target:
            return j
    return len(tokens) - 1


def _start(token: Token) -> int:
    return token.start


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.toks = tokens

    def members(self, i: int, end: int, path: tuple[str, ...]) -> list[Decl]:
        decls: list[Decl] = []
        while i < end:
            t = self.toks[i]
            if t.text == ";" or t.text not in DECL_START:
                i += 1  # a stray token: Dafny will say what it is
                continue
            decl, i = self.declaration(i, end, path)
            decls.append(decl)
        return decls

    def declaration(self, i: int, end: int, path: tuple[str, ...]) -> tuple[Decl, int]:
        start = i
        modifiers: list[str] = []
        while i < end and self.toks[i].text in MODIFIERS:
            modifiers.append(self.toks[i].text)
            i += 1
        if i >= end:
            return Decl("modifier", "", path, tuple(modifiers), self.toks[start:i]), i
        kw = self.toks[i].text
        if kw in MODIFIERS or kw not in DECL_START:  # `least` without a member, say
            kw = "other"
        j = i + 1
        while j < end and self.toks[j].text == "{:":
            j = _matching(self.toks, j) + 1
        name = self.toks[j].text if j < end and self.toks[j].kind == "id" else ""
        if kw == "constructor" and name in ("(", "<", ""):
            name = "constructor"
        if kw in CONTAINERS:
            return self.container(start, i, end, path, tuple(modifiers), kw, name)
        if kw in METHODS or kw in FUNCTIONS:
            return self.callable(start, i, end, path, tuple(modifiers), kw, name)
        stop = self.opaque_end(i + 1, end)
        return Decl(kw, name, path, tuple(modifiers), self.toks[start:stop]), stop

    def opaque_end(self, i: int, end: int) -> int:
        """Where a declaration without a body of its own ends: the next declaration at depth
        0, or the `}` that closes its container."""
        while i < end:
            t = self.toks[i]
            if t.text in ("(", "[", "{", "{:", "#["):
                i = _matching(self.toks, i) + 1
                continue
            if t.text == "}":
                return i
            if t.text in DECL_START and (
                t.text not in ("var", "const") or ends_expression(self.toks[i - 1])
            ):
                return i
            i += 1
        return end

    def container(
        self,
        start: int,
        i: int,
        end: int,
        path: tuple[str, ...],
        modifiers: tuple[str, ...],
        kw: str,
        name: str,
    ) -> tuple[Decl, int]:
        j = i + 1
        while j < end and self.toks[j].text != "{":
            if self.toks[j].text == "{:":
                j = _matching(self.toks, j)
            j += 1
        close = _matching(self.toks, j) if j < end else end
        decl = Decl(kw, name, path, modifiers, self.toks[start : close + 1])
        decl.header = strip_attributes(self.toks[start:j])
        decl.members = self.members(j + 1, close, (*path, name))
        return decl, close + 1

    def callable(
        self,
        start: int,
        i: int,
        end: int,
        path: tuple[str, ...],
        modifiers: tuple[str, ...],
        kw: str,
        name: str,
    ) -> tuple[Decl, int]:
        decl = Decl(kw, name, path, modifiers, [])
        j = i + 1
        # The signature: up to the first clause keyword or the body.
        while j < end:
            word = self.toks[j].text
            if word in ("(", "[", "{:", "#["):
                j = _matching(self.toks, j) + 1
                continue
            if word in CLAUSES or word in (_YIELD, "{", "}") or word in DECL_START:
                break
            j += 1
        decl.header = strip_attributes(self.toks[start:j])
        while j < end:
            t = self.toks[j]
            if t.text == _YIELD or t.text in CLAUSES:
                k = j + 1 if t.text in CLAUSES else j + 2
                keyword = t.text if t.text in CLAUSES else f"yield {self.toks[j + 1].text}"
                pending = 0  # `var x := e;` and `assert e;` inside the expression: their `;`
                while k < end:
                    u = self.toks[k]
                    if u.text in ("var", "assert", "assume", "reveal"):
                        pending += 1
                    elif u.text == ";" and pending:
                        pending -= 1
                        k += 1
                        continue
                    if u.text in ("(", "[", "{:", "#["):
                        k = _matching(self.toks, k) + 1
                        continue
                    if u.text == "{":
                        if ends_expression(self.toks[k - 1], self.toks[k - 2]) or (
                            self.toks[k - 1].text == "*" and self.toks[k - 2].text in CLAUSES
                        ):
                            break
                        k = _matching(self.toks, k) + 1
                        continue
                    if u.text in CLAUSES or u.text in (_YIELD, "}", ";"):
                        break
                    if u.text in DECL_START and (
                        u.text not in ("var", "const") or ends_expression(self.toks[k - 1])
                    ):
                        break
                    k += 1
                decl.clauses.append((keyword, strip_attributes(self.toks[j + 1 : k])))
                j = k + 1 if k < end and self.toks[k].text == ";" else k
                continue
            if t.text == "{":
                close = _matching(self.toks, j)
                decl.body = self.toks[j : close + 1]
                j = close + 1
                # Dafny 4: `function F(): T { e } by method { s }`: the method is an
                # implementation, free as a method's body is.
                if j + 2 < end and self.toks[j].text == "by" and self.toks[j + 1].text == "method":
                    close = _matching(self.toks, j + 2)
                    decl.by_method = self.toks[j + 2 : close + 1]
                    j = close + 1
            break
        decl.tokens = self.toks[start:j]
        return decl, j


def parse(source: str, tokens: list[Token] | None = None) -> list[Decl]:
    """The top-level declarations of a Dafny program (`tokens`: its tokens, if made already:
    the lexer, in Python, costs 2 ms per 1,000 characters)."""
    if tokens is None:
        tokens = tokenize(source)
    return _Parser(tokens).members(0, len(tokens), ())


def walk(decls: Iterable[Decl]) -> Iterator[Decl]:
    for decl in decls:
        yield decl
        yield from walk(decl.members)


# -- constructs that accept a claim without a proof -------------------------------------------

# Attributes that cannot make Dafny accept anything unproved: they steer triggers, fuel,
# induction, splitting and time limits, name things, or warn. Every other attribute is refused
# (`{:*}` in `forbid`): besides the known holes ({:axiom}, {:verify false}, {:extern},
# {:options}, {:only}, {:autoReq}), Dafny hands unknown attributes to Boogie, where some
# weaken the check ({:inline N} assumes false past depth N, {:selective_checking}, ...).
SOUND_ATTRIBUTES = frozenset(
    {
        "trigger",
        "induction",
        "inductionTrigger",
        "fuel",
        "opaque",
        "timeLimit",
        "timeLimitMultiplier",
        "rlimit",
        "resource_limit",
        "vcs_split_on_every_assert",
        "vcs_max_splits",
        "vcs_max_cost",
        "vcs_max_keep_going_splits",
        "split_here",
        "isolate_assertions",
        "isolate",
        "focus",
        "nowarn",
        "warnShadowing",
        "compile",
        "main",
        "tailrecursion",
        "abstemious",
        "id",
        "priority",
        "matchinglooprewrite",
        "matchingloop",
        "transparent",
        "print",
        "disable_nonlinear_arithmetic",
        "autotriggers",
        "nativeType",
        "termination",
        "subsumption",
        "test",
        "heapQuantifier",
        "witness",
        "layerQuantifier",
        "_induction",
        "_inductionPattern",
        "_trigger",
        "_reads",
        "_writes",
    }
)
# `{:termination false}` lets a trait's methods skip the termination check across modules:
# it is refused below with the others whose arguments matter.
_ARGUMENT_CHECKED = {"termination": ("true",), "compile": ("true", "false")}

KEYWORD_CONSTRUCTS = ("assume", "expect", "bodiless", "decreases *", "include")
"""`forbid` names that are not attributes."""


@dataclass(frozen=True, slots=True)
class Finding:
    construct: str  # the `forbid` name it falls under
    line: int
    col: int
    text: str  # normalised, to compare with the reference's own

    def describe(self) -> str:
        return f"line {self.line}: {self.text}"


def attributes(tokens: list[Token]) -> Iterator[tuple[str, list[Token], Token]]:
    """Each `{:name args}`: its name, its argument tokens and its opening token."""
    for i, t in enumerate(tokens):
        if t.text == "{:" and i + 1 < len(tokens):
            close = _matching(tokens, i)
            yield tokens[i + 1].text, tokens[i + 2 : close], t


def findings(
    source: str, decls: list[Decl] | None = None, tokens: list[Token] | None = None
) -> list[Finding]:
    """Every construct of the catalogue in `source`, wherever it is (nested, in expressions,
    in attributes); never text in comments or strings (`tokens`: as for `parse`)."""
    if tokens is None:
        tokens = tokenize(source)
    if decls is None:
        decls = _Parser(tokens).members(0, len(tokens), ())
    out: list[Finding] = []
    for i, t in enumerate(tokens):
        if t.kind != "id":
            continue
        prev = tokens[i - 1] if i else None
        if prev is not None and prev.text == "{:":
            continue  # an attribute's name: below
        if t.text == "assume":
            end = _statement_end(tokens, i)
            out.append(Finding("assume", t.line, t.col, text(tokens[i:end])))
        elif t.text == "expect" and (prev is None or prev.text in ("{", "}", ";", ":", ":-")):
            # Dafny 3+: checked at run time, *assumed* by the verifier. A statement only:
            # elsewhere `expect` is a 2.x program's identifier.
            end = _statement_end(tokens, i)
            out.append(Finding("expect", t.line, t.col, text(tokens[i:end])))
        elif t.text == "decreases" and i + 1 < len(tokens) and tokens[i + 1].text == "*":
            # The method or loop may run forever: its postcondition is only partial.
            out.append(Finding("decreases *", t.line, t.col, "decreases *"))
        elif t.text == "include":
            out.append(Finding("include", t.line, t.col, text(tokens[i : i + 2])))
        elif t.text in ("while", "forall") and _bodiless_statement(tokens, i):
            # A loop with no body havocs its variables and assumes its invariant; a `forall`
            # statement with none assumes its ensures clause.
            what = f"{t.text} statement with no body"
            out.append(Finding("bodiless", t.line, t.col, what))
    for name, args, opener in attributes(tokens):
        shown = "{:" + " ".join([name, *(a.text for a in args)]) + "}"
        construct = _attribute_construct(name, text(args))
        if construct is not None:
            out.append(Finding(construct, opener.line, opener.col, shown))
    for i, t in enumerate(tokens[:-1]):
        # Dafny 4.9's other spelling: `@Axiom`, `@Verify(false)`, `@IsolateAssertions`.
        label_use = i > 0 and tokens[i - 1].end == t.start and tokens[i - 1].kind == "id"
        if t.text == "@" and tokens[i + 1].kind == "id" and tokens[i + 1].start == t.end:
            if label_use:  # `old@L(e)`: a heap label, not an attribute
                continue
            name = tokens[i + 1].text
            args = []
            if i + 2 < len(tokens) and tokens[i + 2].text == "(":
                args = tokens[i + 3 : _matching(tokens, i + 2)]
            lower = name[:1].lower() + name[1:]
            construct = _attribute_construct(_AT_NAMES.get(name, lower), text(args))
            if construct is not None:
                shown = f"@{name}" + (f"({text(args)})" if args else "")
                out.append(Finding(construct, t.line, t.col, shown))
    for decl in walk(decls):
        if not decl.callable or decl.body is not None:
            continue
        if not any(kw in ("ensures", "yield ensures") for kw, _ in decl.clauses):
            continue
        if "trait" in _enclosing_kinds(decls, decl) and "static" not in decl.modifiers:
            continue  # a trait's method is proved by each class that implements it
        out.append(
            Finding(
                "bodiless",
                decl.line,
                decl.tokens[0].col,
                f"{decl.kind} {decl.name} has an ensures clause and no body",
            )
        )
    return out


_AT_NAMES = {"IsolateAssertions": "isolate_assertions", "ResourceLimit": "resource_limit"}


def _attribute_construct(name: str, args: str) -> str | None:
    """The `forbid` name an attribute falls under, or `None` for a sound one."""
    if name == "verify":
        return "{:verify false}"
    if name in SOUND_ATTRIBUTES and (
        name not in _ARGUMENT_CHECKED or args in _ARGUMENT_CHECKED[name]
    ):
        return None
    if name in ("axiom", "extern", "options", "only", "autoReq", "imported"):
        return "{:" + name + "}"
    return "{:*}"


def abstract_trait_members(decls: list[Decl]) -> bool:
    """Whether a trait declares a member with an ensures clause and no body (Dafny 2.3's
    /noCheating:1 refuses those, though each class that extends the trait proves them)."""
    return any(
        d.kind == "trait"
        and any(
            m.callable
            and m.body is None
            and "static" not in m.modifiers
            and any(kw == "ensures" for kw, _ in m.clauses)
            for m in d.members
        )
        for d in walk(decls)
    )


def _enclosing_kinds(decls: list[Decl], target: Decl) -> list[str]:
    def search(items: list[Decl], trail: list[str]) -> list[str] | None:
        for d in items:
            if d is target:
                return trail
            found = search(d.members, [*trail, d.kind])
            if found is not None:
                return found
        return None

    return search(decls, []) or []


def _bodiless_statement(tokens: list[Token], i: int) -> bool:
    """Whether the `while` loop or `forall` statement at `i` has no body. (A `forall` that is
    not at the start of a statement is an expression: not judged here.)"""
    prev = tokens[i - 1].text if i else ""
    if tokens[i].text == "forall" and prev not in ("{", "}", ";", ":"):
        return False
    j = i + 1
    alternatives = j < len(tokens) and tokens[j].text in ("{", "invariant", "decreases", "modifies")
    if alternatives and tokens[i].text == "while":  # `while { case … }`: guarded alternatives
        return False
    while j < len(tokens):
        t = tokens[j].text
        if t in ("(", "[", "{:", "#["):
            j = _matching(tokens, j) + 1
            continue
        if t == "{":
            before = tokens[j - 1]
            if ends_expression(before, tokens[j - 2]) or before.text == "*":
                return False
            j = _matching(tokens, j) + 1  # a set display
            continue
        if t == "}" or t in ("while", "for") or t in METHODS or t in FUNCTIONS:
            return True
        if t == ";":  # Dafny 2 allows `invariant P;`: the loop goes on if a clause follows
            following = tokens[j + 1].text if j + 1 < len(tokens) else ""
            if following == "{":
                return False
            if following not in ("invariant", "decreases", "modifies", "ensures", "free"):
                return True
        j += 1
    return True


_SCAN = 256  # tokens looked at for a finding's text or a loop's header: keeps hostile input linear


def _statement_end(tokens: list[Token], i: int) -> int:
    """The end of the statement or expression prefix starting at `i` (its `;`, included)."""
    j = i + 1
    while j < min(len(tokens), i + _SCAN):
        t = tokens[j].text
        if t in ("(", "[", "{", "{:", "#["):
            j = _matching(tokens, j) + 1
            continue
        if t == ";":
            return j + 1
        if t == "}":
            return j
        j += 1
    return j


def unmatched(completion: list[Finding], reference: list[Finding]) -> list[Finding]:
    """The completion's findings the reference does not have itself (a reference's own
    `assume` may be kept; new ones may not)."""
    allowed = Counter((f.construct, f.text) for f in reference)
    out = []
    for f in completion:
        if allowed[(f.construct, f.text)] > 0:
            allowed[(f.construct, f.text)] -= 1
        else:
            out.append(f)
    return out


# -- the specification kept -----------------------------------------------------------------------


def spec_changes(reference: list[Decl], completion: list[Decl]) -> list[str]:
    """How the completion changed the reference's specification: each of the reference's
    signatures and `requires`/`ensures`/`decreases`/`reads`/`modifies` clauses, its function
    bodies (they define what the ensures clauses mean) and its other declarations (types,
    constants, fields) must be there unchanged; no precondition, frame or `reads` may be added.
    Adding ensures clauses, members, invariants, assertions and lemmas is allowed."""
    found = {d.key: d for d in walk(completion)}
    opaque = Counter(
        (d.path, text(strip_attributes(d.tokens)))
        for d in walk(completion)
        if not d.callable and d.kind not in CONTAINERS
    )
    problems: list[str] = []
    for ref in walk(reference):
        where = ".".join((*ref.path, ref.name)) or ref.kind
        if not ref.callable and ref.kind not in CONTAINERS:
            key = (ref.path, text(strip_attributes(ref.tokens)))
            if opaque[key] > 0:
                opaque[key] -= 1
            else:
                problems.append(f"{ref.kind} {where} (line {ref.line}) changed or removed")
            continue
        got = found.get(ref.key)
        if got is None:
            problems.append(f"{ref.kind} {where} (line {ref.line}) removed")
            continue
        if text(ref.header) != text(got.header):
            problems.append(
                f"{ref.kind} {where}: signature changed from `{text(ref.header)}` "
                f"to `{text(got.header)}`"
            )
        if not ref.callable:
            continue
        for keyword in sorted({kw for kw, _ in ref.clauses} | {kw for kw, _ in got.clauses}):
            had, has = Counter(ref.clause_texts(keyword)), Counter(got.clause_texts(keyword))
            for clause in (had - has).elements():
                problems.append(f"{ref.kind} {where}: `{keyword} {clause}` removed or changed")
            added = list((has - had).elements())
            if not added or keyword in ("ensures", "yield ensures"):
                continue  # a stronger postcondition is the model's to prove
            if keyword == "decreases" and not had:
                continue  # a termination measure is a proof hint (`decreases *` is refused)
            for clause in added:
                problems.append(f"{ref.kind} {where}: `{keyword} {clause}` added")
        if ref.kind in FUNCTIONS and ref.body is not None:
            body = text(without_hints(got.body)) if got.body is not None else None
            if body != text(without_hints(ref.body)):
                problems.append(
                    f"{ref.kind} {where}: body changed (a function's body is part of "
                    "the specification)"
                )
    return problems


_STATEMENT_START = frozenset({"{", ";", "then", "else", "=>", "}"})


def without_hints(tokens: list[Token]) -> list[Token]:
    """A function body without its proof hints (what DafnyBench removes and a model adds
    back): `assert e;`, `assert e by {…}`, `calc {…}`, `reveal f();` and lemma calls `L(x);`
    before the expression; and without attributes."""
    tokens = strip_attributes(tokens)
    out: list[Token] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        at_start = not out or out[-1].text in _STATEMENT_START
        end = None
        if t.text in ("assert", "reveal"):
            end = _hint_end(tokens, i)
        elif t.text == "calc" and i + 1 < len(tokens):
            end = _matching(tokens, i + 1) + 1
            if end < len(tokens) and tokens[end].text == ";":
                end += 1
        elif t.kind == "id" and at_start:
            j = i + 1
            while j + 1 < len(tokens) and tokens[j].text == "." and tokens[j + 1].kind == "id":
                j += 2
            if j < len(tokens) and tokens[j].text == "(":
                close = _matching(tokens, j)
                if close + 1 < len(tokens) and tokens[close + 1].text == ";":
                    end = close + 2
        if end is not None:
            i = end
            continue
        out.append(t)
        i += 1
    return out


def _hint_end(tokens: list[Token], i: int) -> int:
    """The end of `assert e;`, `assert e by {…}` or `reveal f();` starting at `i`."""
    j = i + 1
    while j < len(tokens):
        t = tokens[j].text
        if t == "by" and j + 1 < len(tokens) and tokens[j + 1].text == "{":
            return _matching(tokens, j + 1) + 1
        if t in ("(", "[", "{", "#["):
            j = _matching(tokens, j) + 1
            continue
        if t == ";":
            return j + 1
        j += 1
    return j


# -- a specification that proves nothing --------------------------------------------------------

_TAUTOLOGY_OPS = frozenset({"==", "<=", ">=", "<==>", "==>", "<==", "==#"})


def _unwrap(tokens: list[Token]) -> list[Token]:
    while len(tokens) >= 2 and tokens[0].text == "(" and _matching(tokens, 0) == len(tokens) - 1:
        tokens = tokens[1:-1]
    return tokens


def _split_top(tokens: list[Token], ops: frozenset[str]) -> tuple[list[Token], str, list[Token]]:
    depth = 0
    for i, t in enumerate(tokens):
        if t.text in ("(", "[", "{", "{:", "#["):
            depth += 1
        elif t.text in (")", "]", "}"):
            depth -= 1
        elif depth == 0 and t.text in ops:
            return tokens[:i], t.text, tokens[i + 1 :]
    return tokens, "", []


def trivial(clause: list[Token]) -> bool:
    """Whether an ensures clause holds whatever the code does: `true`, `e == e`, `e ==> true`,
    `false ==> e`, `e || true`, `!false`, and conjunctions of those."""
    tokens = _unwrap(clause)
    if not tokens:
        return True
    if any(t.text in ("forall", "exists", "::", "|", "var", "if", "match") for t in tokens):
        return False  # binders: only whole-clause patterns below are judged
    left, op, right = _split_top(tokens, frozenset({"&&"}))
    if op:
        return trivial(left) and trivial(right)
    left, op, right = _split_top(tokens, frozenset({"||"}))
    if op:
        return trivial(left) or trivial(right)
    t = text(tokens)
    if t in ("true", "! false"):
        return True
    left, op, right = _split_top(tokens, frozenset({"==>"}))
    if op:
        return text(_unwrap(left)) == "false" or trivial(right) or text(left) == text(right)
    left, op, right = _split_top(tokens, _TAUTOLOGY_OPS)
    return bool(op) and text(_unwrap(left)) == text(_unwrap(right))


def proves_nothing(decls: list[Decl]) -> str | None:
    """Why the program's specification proves nothing, or `None`."""
    ensures = [
        (d, toks)
        for d in walk(decls)
        if d.callable
        for kw, toks in d.clauses
        if kw in ("ensures", "yield ensures")
    ]
    if not ensures:
        return "no method, lemma or function has an ensures clause"
    empty = [d for d, toks in ensures if trivial(toks)]
    if empty:
        d, toks = next((d, t) for d, t in ensures if trivial(t))
        return (
            f"{d.kind} {d.name} (line {d.line}): `ensures {text(toks)}` holds whatever the "
            "code does"
        )
    return None


# -- Dafny 4 → 2.x ----------------------------------------------------------------------------

_STABLE = re.compile(
    r"^(?:[A-Za-z_][\w']*|[0-9]+|\| [A-Za-z_][\w']* \||[A-Za-z_][\w']* \. Length)$"
)


def to_dafny2(source: str) -> tuple[str, list[str]]:
    """Dafny 4 source in the 2.x forms that prove the same: `ghost function` → `function`,
    compiled `function`/`predicate` → `function method`/`predicate method`, `least`/
    `greatest` → `inductive`/`co` forms, and `for` loops over stable bounds → `while` loops
    with the bounds invariant a `for` loop has. Returns the new source and what was done."""
    tokens = tokenize(source)
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) on the source
    done: Counter[str] = Counter()
    for i, t in enumerate(tokens):
        prev = tokens[i - 1].text if i else ""
        nxt = tokens[i + 1].text if i + 1 < len(tokens) else ""
        if t.kind != "id":
            continue
        if t.text in ("function", "predicate") and nxt != "method":
            if prev == "ghost":
                edits.append((tokens[i - 1].start, t.start, ""))
                done["ghost function → function"] += 1
            elif prev not in ("twostate", "least", "greatest", "inductive"):
                edits.append((t.end, t.end, " method"))
                done[f"{t.text} → {t.text} method"] += 1
        elif t.text in ("least", "greatest") and nxt in ("predicate", "lemma"):
            form = {
                ("least", "predicate"): "inductive predicate",
                ("least", "lemma"): "inductive lemma",
                ("greatest", "predicate"): "copredicate",
                ("greatest", "lemma"): "colemma",
            }[(t.text, nxt)]
            edits.append((t.start, tokens[i + 1].end, form))
            done[f"{t.text} {nxt} → {form}"] += 1
        elif t.text == "for" and tokens[i + 2].text == ":=" if i + 2 < len(tokens) else False:
            rewritten = _for_loop(source, tokens, i)
            if rewritten is not None:
                edits.append(rewritten)
                done["for loop → while loop"] += 1
    if not edits:
        return source, []
    out, last = [], 0
    for start, end, new in sorted(edits):
        if start < last:  # overlapping (a function inside a rewritten loop cannot be)
            continue
        out += [source[last:start], new]
        last = end
    out.append(source[last:])
    return "".join(out), [f"{what} ({n}×)" if n > 1 else what for what, n in done.items()]


def _for_loop(source: str, tokens: list[Token], i: int) -> tuple[int, int, str] | None:
    """`for x := lo to hi SPEC { BODY }` → `{ var x := lo; while x < hi invariant lo <= x <= hi
    SPEC { BODY x := x + 1; } }` (and `downto` the other way), when lo and hi are a literal, a
    variable, `|s|` or `a.Length`: a bound the body could change would be read once by the `for`
    loop and at each turn by the `while` loop."""
    var = tokens[i + 1].text
    j = i + 3
    k = j
    limit = min(len(tokens), i + _SCAN)
    while k < limit and tokens[k].text not in ("to", "downto"):
        k += 1
    if k >= limit:
        return None
    lo, direction = tokens[j:k], tokens[k].text
    m = k + 1
    while m < limit and tokens[m].text not in ("{", "invariant", "decreases", "modifies"):
        if tokens[m].text in ("(", "["):
            m = _matching(tokens, m)
        m += 1
    hi = tokens[k + 1 : m]
    if not (_STABLE.match(text(lo)) and _STABLE.match(text(hi))):
        return None
    # The loop's own clauses, up to its body.
    b = m
    while b < limit:
        if tokens[b].text == "{" and ends_expression(tokens[b - 1]) and b > m:
            break
        if tokens[b].text == "{" and b == m:
            break
        if tokens[b].text in ("(", "[", "{:", "{"):
            b = _matching(tokens, b)
        b += 1
    if b >= limit:
        return None
    close = _matching(tokens, b)
    spec = source[tokens[m].start : tokens[b].start] if m < b else ""
    body = source[tokens[b].start + 1 : tokens[close].start]
    first = source[tokens[j].start : tokens[k - 1].end]
    second = source[tokens[k + 1].start : tokens[m - 1].end]
    if direction == "to":  # first, first + 1, ..., second - 1
        head = f"var {var} := {first}; while {var} < {second} "
        head += f"invariant {first} <= {var} <= {second} "
        loop = f"{{ {head}{spec}{{{body} {var} := {var} + 1; }} }}"
    else:  # `for x := hi downto lo`: hi - 1, ..., lo
        head = f"var {var} := {first}; while {var} > {second} "
        head += f"invariant {second} <= {var} <= {first} "
        loop = f"{{ {head}{spec}{{ {var} := {var} - 1;{body} }} }}"
    return tokens[i].start, tokens[close].end, loop
