"""Table cells: the one set of rules for turning what a table holds into values, for every job.

Tables differ in types (CSV text, Parquet numbers, Arrow nulls) and a hostile cell may hold anything, so
a block is first normalized to text (`text`), then each cell is parsed by its column's declared type
(`parse`). Only a missing cell (Arrow null; an empty CSV cell) means "use the default": NaN, inf or text
in a number column is an error that names the column, never a silent default, and no cell's size or
digits can raise anything but ConfigError.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa

from animatediff_core.configs import need, short
from animatediff_core.errors import ConfigError

TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


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
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    try:
        return None if pd.isna(v) else str(v)
    except (TypeError, ValueError):  # lists, arrays: not a scalar cell
        return str(v)


def normalize(batch, columns) -> pd.DataFrame:
    """A table block -> `columns`, all text (rows parse them later; absent columns are all None).

    From Arrow, nulls are missing and NaN is a value; from pandas (which cannot tell them apart), NaN is missing."""
    if isinstance(batch, pa.Table):
        names, n = batch.column_names, batch.num_rows
        return pd.DataFrame({c: [text(v) for v in batch.column(c).to_pylist()] if c in names else [None] * n
                             for c in columns})
    n = len(batch)
    return pd.DataFrame({c: [text(v, True) for v in batch[c]] if c in batch.columns else [None] * n for c in columns})


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
