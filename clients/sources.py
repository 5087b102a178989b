"""What `assay score` reads: JSONL, Parquet, or a Hugging Face `datasets` folder saved with
`save_to_disk`, row by row (a file of a million rows never sits in memory whole), each row
turned into an item by a column mapping, or into a ready `invalid_spec` result saying why not.

Parquet is read with pyarrow batch by batch; a `datasets` folder is read as the Arrow stream
files it is made of (`state.json` lists them), with pyarrow too, so `datasets` itself is not
needed. pyarrow is imported only for those two (`pip install 'assay[cli]'`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from assay.clients.schema import AssayError, ScoreItem, ScoreResult, item_from_label

FIELDS = ("id", "verifier", "completion", "spec", "extract", "label")


class SourceError(AssayError):
    """The input cannot be read at all (missing, unknown format, no such split)."""


@dataclass(frozen=True)
class Columns:
    """Which input column feeds each item field (`--column FIELD=COLUMN`), and a verifier
    for every row (`--verifier`). A `label` column carries verifier, spec and extract as one
    JSON object (a trainer's label, e.g. verl's `ground_truth`)."""

    names: dict[str, str] = field(default_factory=dict)
    verifier: str | None = None

    @classmethod
    def parse(cls, pairs: list[str], verifier: str | None = None) -> Columns:
        names: dict[str, str] = {}
        for pair in pairs:
            name, sep, column = pair.partition("=")
            if not sep or name not in FIELDS or not column:
                raise SourceError(
                    f"--column takes FIELD=COLUMN with FIELD one of {', '.join(FIELDS)}: {pair!r}"
                )
            names[name] = column
        return cls(names, verifier)

    def column(self, name: str) -> str:
        return self.names.get(name, name)


def _bad_row(number: int, ident: Any, problem: str, where: str) -> ScoreResult:
    return ScoreResult(
        id=ident if isinstance(ident, str | int) and not isinstance(ident, bool) else None,
        reward=None,
        status="invalid_spec",
        feedback=f"input {where} {number}: {problem}"[:2000],
        details={"line": number} if where == "line" else {"row": number},
    )


def to_item(
    row: Mapping[str, Any], number: int, columns: Columns, where: str
) -> ScoreItem | ScoreResult:
    """One row as an item, or a result saying what is wrong with it."""
    ident = row.get(columns.column("id"))
    completion = row.get(columns.column("completion"))
    if not isinstance(completion, str):
        problem = (
            "completion: Field required"
            if completion is None
            else f"completion: must be text, not {type(completion).__name__}"
        )
        return _bad_row(number, ident, problem, where)
    if "label" in columns.names:
        made = item_from_label(
            completion,
            row.get(columns.names["label"]),
            verifier=columns.verifier or row.get(columns.column("verifier")),
            spec=row.get(columns.names["spec"]) if "spec" in columns.names else None,
            extract=row.get(columns.column("extract")),
            ident=ident if isinstance(ident, str | int) else None,
        )
        if isinstance(made, ScoreResult):
            return _bad_row(number, ident, made.feedback, where)
        return made
    raw = {name: row[columns.column(name)] for name in FIELDS if columns.column(name) in row}
    raw.pop("label", None)
    if columns.verifier is not None:
        raw["verifier"] = columns.verifier
    if isinstance(raw.get("spec"), str):  # a spec column of JSON text
        try:
            raw["spec"] = json.loads(raw["spec"])
        except json.JSONDecodeError as exc:
            return _bad_row(number, ident, f"spec: not valid JSON: {exc.msg}", where)
    if isinstance(raw.get("spec"), Mapping):  # Arrow structs give absent keys as None
        raw["spec"] = {k: v for k, v in raw["spec"].items() if v is not None}
    if raw.get("extract") is None:
        raw.pop("extract", None)
    try:
        return ScoreItem.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'item'}: {e['msg']}" for e in exc.errors()
        )
        return _bad_row(number, ident, problems, where)


@dataclass
class Source:
    """An input: its rows as items (or ready results), and how many rows it has if known."""

    rows: Iterator[ScoreItem | ScoreResult]
    total: int | None
    closer: Callable[[], object] | None = None

    def close(self) -> None:
        if self.closer is not None:
            self.closer()
            self.closer = None

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _jsonl(path: str, columns: Columns) -> Source:
    if path == "-":
        stream = sys.stdin
        total = None
    else:
        try:
            stream = open(path, encoding="utf-8")  # noqa: SIM115 (closed by Source.close)
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror}") from exc
        total = _count_rows(path)

    def rows() -> Iterator[ScoreItem | ScoreResult]:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                yield _bad_row(
                    number, None, f"not valid JSON: {exc.msg} (column {exc.colno})", "line"
                )
                continue
            if not isinstance(raw, dict):
                yield _bad_row(number, None, "not a JSON object", "line")
                continue
            yield to_item(raw, number, columns, "line")

    return Source(rows(), total, None if stream is sys.stdin else stream.close)


def _count_rows(path: str) -> int:
    """Non-blank lines, read line by line: the progress bar's total, in constant memory."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _pyarrow() -> Any:
    try:
        import pyarrow  # type: ignore[import-untyped]
        import pyarrow.parquet  # type: ignore[import-untyped]
    except ImportError as exc:
        raise SourceError(
            "reading Parquet or a datasets folder needs pyarrow: pip install 'assay[cli]'"
        ) from exc
    return pyarrow


def _parquet(path: Path, columns: Columns) -> Source:
    pa = _pyarrow()
    try:
        parquet = pa.parquet.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"cannot read {path} as Parquet: {exc}") from exc

    def rows() -> Iterator[ScoreItem | ScoreResult]:
        number = 0
        for batch in parquet.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield to_item(row, number, columns, "row")

    return Source(rows(), parquet.metadata.num_rows, parquet.close)


def _dataset(path: Path, columns: Columns, split: str | None) -> Source:
    pa = _pyarrow()
    if (path / "dataset_dict.json").exists():
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        chosen = split or ("train" if "train" in splits else None)
        if chosen is None or chosen not in splits:
            raise SourceError(
                f"{path} holds the splits {', '.join(splits)}: choose one with --split"
            )
        path = path / chosen
    elif split is not None:
        raise SourceError(f"{path} is a single dataset; it has no splits")
    try:
        state = json.loads((path / "state.json").read_text())
        files = [path / f["filename"] for f in state["_data_files"]]
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path} is not a folder written by datasets' save_to_disk") from exc
    total = 0
    for file in files:  # the row counts, from each file's batches' headers
        with pa.memory_map(str(file)) as source:
            total += sum(b.num_rows for b in pa.ipc.open_stream(source))

    def rows() -> Iterator[ScoreItem | ScoreResult]:
        number = 0
        for file in files:
            with pa.memory_map(str(file)) as source:
                for batch in pa.ipc.open_stream(source):
                    for row in batch.to_pylist():
                        number += 1
                        yield to_item(row, number, columns, "row")

    return Source(rows(), total)


def open_source(path: str, columns: Columns, split: str | None = None) -> Source:
    """The rows of a JSONL file ('-': stdin), a Parquet file or a `datasets` folder."""
    where = Path(path)
    if path != "-" and where.is_dir():
        return _dataset(where, columns, split)
    if path != "-" and not where.exists():
        raise SourceError(f"cannot read {path}: No such file or directory")
    if where.suffix == ".parquet":
        return _parquet(where, columns)
    return _jsonl(path, columns)


__all__ = ["FIELDS", "Columns", "Source", "SourceError", "open_source", "to_item"]
