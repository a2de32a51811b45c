"""Tables, read by one rule for every job: `.csv`, `.csv.gz`, `.parquet` (`.pq`), or a folder of them.

Prompt tables, checkpoint tables, WebVid tables and evaluation suites all come through here, on the
driver (`read_pandas`, small tables; `header`, a file's columns without reading its rows) or as a Ray
Dataset (`read_ray`, streaming, for tables of any size). Folders are searched two levels deep (as
video2dataset and Spark lay out shards); names starting with `.` or `_` are ignored. Any fsspec URI.
"""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from animatediff_core.configs import need
from animatediff_core.errors import ConfigError
from animatediff_core.io import storage

CSV_EXTS = (".csv", ".csv.gz")
PARQUET_EXTS = (".parquet", ".pq")
TABLE_EXTS = CSV_EXTS + PARQUET_EXTS
KINDS_TEXT = ".csv, .csv.gz or .parquet"


def is_table(uri: str) -> bool:
    return uri.lower().endswith(TABLE_EXTS)


def is_parquet(uri: str) -> bool:
    return uri.lower().endswith(PARQUET_EXTS)


def list_files(uri: str) -> list[str]:
    """Files under folder `uri` (two levels deep), as URIs spelled like `uri`; hidden names skipped."""
    fs, root = storage.fs_and_path(uri)
    root = root.rstrip("/")
    found = sorted(p for p in fs.find(root, maxdepth=2) if not p.rsplit("/", 1)[-1].startswith((".", "_")))
    return [storage.join(uri, p[len(root):].lstrip("/")) for p in found]


def list_tables(uri: str, flag: str) -> list[str]:
    """The table files `uri` names: itself, or the tables in a folder. ConfigError (naming `flag`) when none."""
    need(storage.exists(uri), f"{flag} {uri}: not found (expected a {KINDS_TEXT} table or a folder of them)")
    if not storage.isdir(uri):
        need(is_table(uri), f"{flag} {uri}: not a table (expected a file ending in {KINDS_TEXT})")
        return [uri]
    tables = [f for f in list_files(uri) if is_table(f)]
    need(tables, f"{flag} {uri}: the folder holds no {KINDS_TEXT} table")
    return tables


def header(uri: str, flag: str) -> tuple[list[str], bool]:
    """(column names, has at least one row) of one table file, reading only its CSV header or Parquet footer."""
    fs, path = storage.fs_and_path(uri)
    try:
        with fs.open(path, "rb", compression="infer") as f:
            if is_parquet(uri):
                meta = pq.ParquetFile(f).metadata
                return list(meta.schema.names), meta.num_rows > 0
            head = f.read(1 << 16)
    except (OSError, EOFError, pa.ArrowInvalid) as e:
        raise ConfigError(f"{flag} {uri}: not a readable table ({type(e).__name__}: {str(e)[:200]})") from None
    lines = [ln for ln in head.splitlines() if ln.strip()]
    if not lines:
        return [], False
    try:
        lines[0].decode("utf-8")
        names = pacsv.read_csv(io.BytesIO(lines[0] + b"\n")).column_names
    except UnicodeDecodeError as e:
        raise ConfigError(f"{flag} {uri}: the header line is not valid UTF-8 (byte {e.start}); save the table as UTF-8") from None
    except pa.ArrowInvalid as e:
        raise ConfigError(f"{flag} {uri}: not a readable CSV header ({str(e)[:200]})") from None
    dup = sorted({n for n in names if names.count(n) > 1})
    need(not dup, f"{flag} {uri}: the header names column(s) {', '.join(map(repr, dup[:5]))} more than once")
    return names, len(lines) > 1


def csv_options(strings: tuple[str, ...] = ()) -> dict:
    """pyarrow CSV options: quoted newlines allowed; `strings` columns kept as text exactly as written
    (a seed of 2**70 or an id of 007 must not be turned into a float or an int); only an empty cell
    is missing ("nan", "NA" or "null" are values, which rows then reject or accept)."""
    return dict(parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in strings},
                                                     null_values=[""], strings_can_be_null=True))


def read_pandas(uri: str, strings: tuple[str, ...] = (), flag: str = "table") -> pd.DataFrame:
    """A whole (small) table, or every table of a folder concatenated, as pandas."""
    parts = []
    for f in list_tables(uri, flag):
        fs, path = storage.fs_and_path(f)
        try:
            with fs.open(path, "rb", compression="infer") as fh:
                table = pq.read_table(fh) if is_parquet(f) else pacsv.read_csv(fh, **csv_options(strings))
        except (OSError, EOFError, pa.ArrowInvalid) as e:
            raise ConfigError(f"{flag} {f}: not a readable table ({type(e).__name__}: {str(e)[:200]})") from None
        parts.append(table.to_pandas())
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def _read_ray_parts(files: list[str], num_cpus: float | None, read_parquet, read_csv):
    """One streaming Ray Dataset over table files: the Parquet files through `read_parquet(paths, filesystem,
    **kw)`, the CSV files through `read_csv(...)`, read apart (Parquet and CSV may be mixed), then unioned."""
    arrow_fs = storage.arrow_location(files[0])[1]
    paths = [storage.arrow_location(f)[0] for f in files]
    kw = {} if num_cpus is None else {"num_cpus": num_cpus}
    parquet = [p for p in paths if is_parquet(p)]
    csv = [p for p in paths if not is_parquet(p)]
    parts = ([read_parquet(parquet, arrow_fs, **kw)] if parquet else []) + ([read_csv(csv, arrow_fs, **kw)] if csv else [])
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def read_ray(files: list[str], strings: tuple[str, ...] = (), num_cpus: float | None = None):
    """A streaming Ray Dataset over table files (Parquet and CSV may be mixed: read apart, then unioned).

    Callers normalize each batch to one schema afterwards (`map_batches`), since tables differ in types."""
    import ray.data  # here: preflight and the checkpoint set read tables with pandas, without Ray

    return _read_ray_parts(
        files, num_cpus,
        lambda paths, fs, **kw: ray.data.read_parquet(paths, filesystem=fs, **kw),
        # Ray Data's CSV reader picks compression from the extension (.csv.gz); it needs no option here.
        lambda paths, fs, **kw: ray.data.read_csv(paths, filesystem=fs, file_extensions=["csv", "gz"],
                                                  **csv_options(strings), **kw))


def read_ray_cells(files: list[str], columns, fn, num_cpus: float | None = None):
    """A streaming Ray Dataset of untrusted tables, each block through `fn` (e.g. `cells.normalize` to
    `columns`): CSV files through `csv_cells.CellsCSV` (no cell or malformed row can fail the read; rows
    numbered by file), Parquet through Ray's reader; the parts are normalized apart, then unioned."""
    import ray.data  # here: preflight and the checkpoint set read tables with pandas, without Ray

    from pipelines import csv_cells

    def read_csv(paths, fs, **kw):
        source = csv_cells.datasource(paths, list(columns), filesystem=fs, file_extensions=["csv", "gz"])
        return ray.data.read_datasource(source, **kw)

    return _read_ray_parts(
        files, num_cpus,
        lambda paths, fs, **kw: ray.data.read_parquet(paths, filesystem=fs, **kw).map_batches(fn, batch_format="pyarrow"),
        lambda paths, fs, **kw: read_csv(paths, fs, **kw).map_batches(fn, batch_format="pyarrow"))


def read_cells(uri: str, flag: str = "table") -> pd.DataFrame:
    """A whole (small) table, or every table of a folder, as text cells by the batch job's rules
    (`cells.normalize`: every column as text, `cells.PROBLEM` naming a row's unusable cell by file and row)."""
    from pipelines import cells, csv_cells  # here: the cell rules import pandas helpers only this reader needs

    parts = []
    for f in list_tables(uri, flag):
        columns, _ = header(f, flag)
        fs, path = storage.fs_and_path(f)
        try:
            with fs.open(path, "rb", compression="infer") as fh:
                table = pq.read_table(fh) if is_parquet(f) else \
                    pa.concat_tables(list(csv_cells.stream(fh, f, columns)) or [csv_cells.schema(columns).empty_table()])
        except (OSError, EOFError, pa.ArrowInvalid) as e:
            raise ConfigError(f"{flag} {f}: not a readable table ({type(e).__name__}: {str(e)[:200]})") from None
        parts.append(cells.normalize(table, columns))
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
