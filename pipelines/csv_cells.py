"""CSV tables as cells that no content can break: every wanted column read as bytes, rows numbered.

pyarrow's CSV reader fails a whole file on one cell that is not UTF-8 (as text) or one malformed row; here
the wanted columns are read as bytes (`cells.normalize` decodes them, a bad cell becoming its row's
problem, named by file and row), other columns are not converted at all, a row with the wrong number of
fields becomes a row saying so, and a file that stops parsing yields the rows before the failure plus one
row saying where it stopped (`cells.BROKEN`), so the job reports it (one line, exit 1) instead of crashing. `datasource` is the Ray Data datasource (tables.read_ray_cells
uses it); `stream` reads one file anywhere (tables.read_cells).
"""

from __future__ import annotations

import functools
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv

from pipelines import cells
from pipelines.cells import BROKEN, FILE, ROW

BLOCK_BYTES = 1 << 22  # pyarrow's read block: a row spans at most this much (a huge cell is cut by cells.py later)


def options(columns, on_invalid=None) -> dict:
    return dict(
        read_options=pacsv.ReadOptions(use_threads=False, block_size=BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.binary() for c in columns}, include_columns=list(columns),
                                             include_missing_columns=True, null_values=[""], strings_can_be_null=True))


def schema(columns) -> pa.Schema:
    return pa.schema([*((c, pa.binary()) for c in columns), (FILE, pa.string()), (ROW, pa.int64()), (BROKEN, pa.string())])


def _problems(target: pa.Schema, columns, path: str, found: list[tuple[int, str]]) -> pa.Table:
    """One row per (row number, why): no cells, only where it was and what went wrong."""
    n = len(found)
    return pa.table([*(pa.nulls(n, pa.binary()) for _ in columns), pa.array([path] * n, pa.string()),
                     pa.array([r for r, _ in found], pa.int64()), pa.array([w for _, w in found], pa.string())], schema=target)


def stream(f, path: str, columns) -> Iterator[pa.Table]:
    """Blocks of `columns` (bytes) with FILE, ROW (counted as a spreadsheet shows them: the header is row 1)
    and BROKEN: null, or why that row could not be read (a row with the wrong number of fields), or, in a
    last row, why the rest of the file could not be read."""
    target, start, invalid = schema(columns), 2, []

    def on_invalid(row) -> str:
        invalid.append((row.number, f"{path} row {row.number} has {row.actual_columns} fields where the header has "
                                    f"{row.expected_columns}"))
        return "skip"

    try:
        for batch in pacsv.open_csv(f, **options(columns, on_invalid)):
            skipped = {r for r, _ in invalid}
            rows = [r for r in range(start, start + batch.num_rows + len(skipped)) if r not in skipped]
            start += batch.num_rows + len(skipped)
            yield pa.table([*(batch.column(c) for c in columns), pa.array([path] * batch.num_rows, pa.string()),
                            pa.array(rows, pa.int64()), pa.nulls(batch.num_rows, pa.string())], schema=target)
            if invalid:
                yield _problems(target, columns, path, invalid)
                invalid.clear()
        if invalid:  # malformed rows after the last parsed one (pyarrow yields no batch for a block of only those)
            yield _problems(target, columns, path, invalid)
    except (pa.ArrowException, OSError, UnicodeError, EOFError) as e:
        why = " ".join(str(e).split())[:300] or type(e).__name__
        found = invalid + [(start, f"{cells.UNREADABLE}{path} could not be read as CSV from row {start} on ({why}); "
                                   "the rows after it were not read")]
        yield _problems(target, columns, path, found)


def datasource(paths, columns, **kwargs):
    """The Ray Data datasource over CSV files (.csv, .csv.gz) that `stream` reads: see the module docstring."""
    return _datasource_class()(paths, columns, **kwargs)


@functools.cache
def _datasource_class():
    from ray.data.datasource import FileBasedDatasource  # here: the driver and evaluation read CSV cells without Ray

    class CellsCSV(FileBasedDatasource):
        _FILE_EXTENSIONS = ["csv", "gz"]

        def __init__(self, paths, columns, **kwargs):
            super().__init__(paths, **kwargs)
            self.columns = list(columns)

        def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
            yield from stream(f, path, self.columns)

    return CellsCSV
