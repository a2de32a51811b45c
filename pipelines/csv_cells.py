"""CSV tables as cells that no content can break: every wanted column read as bytes, rows numbered.

pyarrow's CSV reader fails a whole file on one cell that is not UTF-8 (as text) or one malformed row; here
the wanted columns are read as bytes (`cells.normalize` decodes them, a bad cell becoming its row's
problem, named by file and row), other columns are not converted at all, and a file that stops parsing
yields the rows before the failure plus one row saying where it stopped (`cells.BROKEN`), so the job
reports it instead of crashing. `CellsCSV` is the Ray Data datasource (tables.read_ray_cells uses it).
"""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
from ray.data.datasource import FileBasedDatasource

from pipelines.cells import BROKEN, FILE, ROW

BLOCK_BYTES = 1 << 22  # pyarrow's read block: a row spans at most this much (a huge cell is cut by cells.py later)


def options(columns) -> dict:
    return dict(
        read_options=pacsv.ReadOptions(use_threads=False, block_size=BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.binary() for c in columns}, include_columns=list(columns),
                                             include_missing_columns=True, null_values=[""], strings_can_be_null=True))


def schema(columns) -> pa.Schema:
    return pa.schema([*((c, pa.binary()) for c in columns), (FILE, pa.string()), (ROW, pa.int64()), (BROKEN, pa.string())])


def stream(f, path: str, columns) -> Iterator[pa.Table]:
    """Blocks of `columns` (bytes) with FILE, ROW (1 = the first row after the header) and BROKEN (null,
    or, in one last row, why the file could not be read from that row on)."""
    target, row = schema(columns), 0
    try:
        reader = pacsv.open_csv(f, **options(columns))
        for batch in reader:
            n = batch.num_rows
            yield pa.table([*(batch.column(c) for c in columns), pa.array([path] * n, pa.string()),
                            pa.array(range(row + 1, row + n + 1), pa.int64()), pa.nulls(n, pa.string())], schema=target)
            row += n
    except (pa.ArrowInvalid, pa.ArrowException, OSError, UnicodeError, EOFError) as e:
        why = " ".join(str(e).split())[:300] or type(e).__name__
        message = f"{path} could not be read as CSV from row {row + 1} on ({why}); the rows after it were not read"
        yield pa.table([*(pa.nulls(1, pa.binary()) for _ in columns), pa.array([path]), pa.array([row + 1], pa.int64()),
                        pa.array([message])], schema=target)


class CellsCSV(FileBasedDatasource):
    """Ray Data datasource over CSV files (.csv, .csv.gz): see the module docstring."""

    _FILE_EXTENSIONS = ["csv", "gz"]

    def __init__(self, paths, columns, **kwargs):
        super().__init__(paths, **kwargs)
        self.columns = list(columns)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        yield from stream(f, path, self.columns)
