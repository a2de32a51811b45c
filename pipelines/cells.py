"""Table cells: the one set of rules for turning what a table holds into values, for every job.

Tables differ in types (CSV text, Parquet numbers, Arrow nulls) and a hostile cell may hold anything, so
a block is first normalized to text (`normalize`), then each cell is parsed by its column's declared type
(`parse`). Only a missing cell (Arrow null; an empty CSV cell) means "use the default": NaN, inf or text
in a number column is an error that names the column, never a silent default, and no cell's size or
digits can raise anything but ConfigError. A cell that is not valid UTF-8 or holds more than
`MAX_CELL_CHARS` characters (prompts included) makes its row's `PROBLEM`, named by file and row where
the reader knows them (`csv_cells.py`); such a cell is kept cut to that size.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa

from animatediff_core.configs import need, short
from animatediff_core.errors import ConfigError

TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
MAX_CELL_CHARS = 10_000  # any cell, prompts included: CLIP reads 77 tokens (a few hundred characters)
PROBLEM = "_problem"  # why a row's cells cannot be used at all ("" when they can)
UNREADABLE = "unreadable table: "  # starts a PROBLEM for the rest of a file that could not be parsed
FILE, ROW, BROKEN = "_file", "_row", "_broken"  # where a row came from; why the reader could not parse it (csv_cells.py)


def text(v, nan_is_missing: bool = False) -> str | None:
    """Any cell -> text or None. NaN and inf stay visible ("nan"), so a row asking for them fails with a
    message instead of silently getting the default; only a missing cell (None) means "use the default"."""
    if v is None:
        return None
    if isinstance(v, float):
        if v != v:
            return None if nan_is_missing else "nan"
        return str(int(v)) if v.is_integer() and abs(v) < 2**63 else repr(v)
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return text(v.item(), nan_is_missing)
    if isinstance(v, (str, int, bool)):
        return str(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).decode("utf-8", "replace")
    try:
        return None if pd.isna(v) else str(v)
    except (TypeError, ValueError):  # lists, arrays: not a scalar cell
        return str(v)


def normalize(batch, columns) -> pd.DataFrame:
    """A table block -> `columns`, all text (rows parse them later; absent columns are all None), plus
    `PROBLEM`: for each row, its first cell that is not valid UTF-8 or is too long ("" when none).

    From Arrow, nulls are missing and NaN is a value; from pandas (which cannot tell them apart), NaN is missing."""
    if isinstance(batch, pa.Table):
        n, names = batch.num_rows, batch.column_names
        get = lambda c: _pylist(batch.column(c))  # noqa: E731
        nan_is_missing = False
    else:
        n, names = len(batch), list(batch.columns)
        get = lambda c: list(batch[c])  # noqa: E731
        nan_is_missing = True
    out, problems = {}, [""] * n
    for c in columns:
        if c not in names:
            out[c] = [None] * n
            continue
        values = []
        for i, v in enumerate(get(c)):
            t, problem = cell(v, nan_is_missing)
            if problem and not problems[i]:
                problems[i] = f"column {c} {problem}"
            values.append(t)
        out[c] = values
    where = _where(get, names, n)
    broken = [text(v) for v in get(BROKEN)] if BROKEN in names else [None] * n
    out[PROBLEM] = [b if b else (f"{w}: {p}" if w else p) if p else "" for b, p, w in zip(broken, problems, where)]
    return pd.DataFrame(out)


def _pylist(column) -> list:
    """A column's values; text as bytes (an invalid UTF-8 string in a Parquet file must not fail the block)."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = column.cast(pa.large_binary())
    return column.to_pylist()


def _where(get, names, n) -> list[str]:
    """"FILE row N" per row, where the reader recorded them (csv_cells.py), else ""."""
    if FILE not in names or ROW not in names:
        return [""] * n
    return [f"{short_path(text(f) or '')} row {r}" if r is not None else "" for f, r in zip(get(FILE), get(ROW))]


def short_path(path: str, limit: int = 80) -> str:
    return path if len(path) <= limit else "..." + path[-(limit - 3):]


def cell(v, nan_is_missing: bool = False) -> tuple[str | None, str]:
    """(text or None, problem): `text(v)`, with bytes decoded as UTF-8 and sizes checked; a cell that is
    not valid UTF-8 or is over MAX_CELL_CHARS comes back cut (invalid bytes replaced) with a problem."""
    problem = ""
    if isinstance(v, (bytes, bytearray, memoryview)):
        raw = bytes(v)
        try:
            t = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            t = raw[: MAX_CELL_CHARS * 4].decode("utf-8", "replace")
            problem = f"is not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start}); save the table as UTF-8"
    else:
        t = text(v, nan_is_missing)
    if t is None:
        return None, ""
    if not t.isascii():
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates: no file format can store them
            t = t.encode("utf-8", "replace").decode("utf-8")
            problem = problem or f"is not valid Unicode (a lone surrogate at character {e.start})"
    if len(t) > MAX_CELL_CHARS:
        problem = problem or f"holds {len(t):,} characters; a cell holds at most {MAX_CELL_CHARS:,}"
        t = t[:MAX_CELL_CHARS] + "…"
    return t, problem


def plain(v):
    """Python scalar or None (None, NaN and pandas/Arrow NA all mean "not given")."""
    if v is None or (not isinstance(v, (str, bytes)) and pd.isna(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def as_int(name: str, v) -> int | None:
    v = plain(v)
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        try:
            return int(v.strip())
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            raise ConfigError(f"{name} must be an integer, got a number of {len(v.strip())} digits") from None
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be an integer, got {short(v, 40)}") from None
    need(math.isfinite(f) and f.is_integer(), f"{name} must be an integer, got {short(v, 40)}")
    return int(f)


def as_float(name: str, v) -> float | None:
    v = plain(v)
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be a number, got {short(v, 40)}") from None
    need(math.isfinite(f), f"{name} must be a finite number, got {short(v, 40)}")
    return f


def as_bool(name: str, v) -> bool | None:
    v = plain(v)
    if v is None or isinstance(v, bool):
        return v
    word = str(v).strip().lower()
    if word == "":
        return None
    if word in TRUE or word in FALSE:
        return word in TRUE
    raise ConfigError(f"{name} must be true or false, got {short(v, 40)}")


def as_text(name: str, v) -> str | None:
    v = plain(v)
    return None if v is None else (str(v).strip() or None)


PARSERS = {int: as_int, float: as_float, bool: as_bool, str: as_text}


def parse(tp: type, name: str, v):
    """The cell `v` of column `name` as a value of Python type `tp` (None: missing); ConfigError otherwise."""
    return PARSERS[tp](name, v)
