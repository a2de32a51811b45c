"""Tables, read by one rule for every job: `.csv`, `.csv.gz`, `.parquet` (`.pq`), or a folder of them;
video tables for training may also be `.tsv` (`.tsv.gz`) and JSON Lines (`.jsonl`, `.jsonl.gz`), the
formats datasets publish (`data=True`; prompt and checkpoint tables stay CSV/Parquet, read cell by cell).

Prompt tables, checkpoint tables, WebVid tables and evaluation suites all come through here, on the
driver (`read_pandas`, small tables; `header`, a file's columns without reading its rows) or as a Ray
Dataset (`read_ray`, streaming, for tables of any size). Folders are searched two levels deep (as
video2dataset and Spark lay out shards); names starting with `.` or `_` are ignored. Any fsspec URI.
"""

from __future__ import annotations

import io
import json

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from animatediff_core.configs import need
from animatediff_core.errors import ConfigError
from animatediff_core.io import storage

CSV_EXTS = (".csv", ".csv.gz")
PARQUET_EXTS = (".parquet", ".pq")
TSV_EXTS = (".tsv", ".tsv.gz")
JSONL_EXTS = (".jsonl", ".jsonl.gz")
TABLE_EXTS = CSV_EXTS + PARQUET_EXTS
DATA_EXTS = TABLE_EXTS + TSV_EXTS + JSONL_EXTS
KINDS_TEXT = ".csv, .csv.gz or .parquet"
DATA_KINDS_TEXT = ".csv, .tsv, .jsonl (each also .gz) or .parquet"


def is_table(uri: str, data: bool = False) -> bool:
    return uri.lower().endswith(DATA_EXTS if data else TABLE_EXTS)


def is_parquet(uri: str) -> bool:
    return uri.lower().endswith(PARQUET_EXTS)


def kind(uri: str) -> str:
    """"parquet", "tsv", "jsonl" or "csv" (by the file's extension)."""
    low = uri.lower()
    return ("parquet" if low.endswith(PARQUET_EXTS) else "tsv" if low.endswith(TSV_EXTS)
            else "jsonl" if low.endswith(JSONL_EXTS) else "csv")


def list_files(uri: str) -> list[str]:
    """Files under folder `uri` (two levels deep), as URIs spelled like `uri`; hidden names skipped."""
    fs, root = storage.fs_and_path(uri)
    root = root.rstrip("/")
    found = sorted(p for p in fs.find(root, maxdepth=2) if not p.rsplit("/", 1)[-1].startswith((".", "_")))
    return [storage.join(uri, p[len(root):].lstrip("/")) for p in found]


def list_tables(uri: str, flag: str, data: bool = False) -> list[str]:
    """The table files `uri` names: itself, or the tables in a folder. ConfigError (naming `flag`) when none."""
    kinds = DATA_KINDS_TEXT if data else KINDS_TEXT
    need(storage.exists(uri), f"{flag} {uri}: not found (expected a {kinds} table or a folder of them)")
    if not storage.isdir(uri):
        need(is_table(uri, data), f"{flag} {uri}: not a table (expected a file ending in {kinds})")
        return [uri]
    tables = [f for f in list_files(uri) if is_table(f, data)]
    need(tables, f"{flag} {uri}: the folder holds no {kinds} table")
    return tables


def header(uri: str, flag: str) -> tuple[list[str], bool]:
    """(column names, has at least one row) of one table file, reading only its CSV header or Parquet footer."""
    fs, path = storage.fs_and_path(uri)
    try:
        with fs.open(path, "rb", compression="infer") as f:
            if is_parquet(uri):
                meta = pq.ParquetFile(f).metadata
                return list(meta.schema.names), meta.num_rows > 0
            head = f.read(1 << 16) if kind(uri) != "jsonl" else f.readline(1 << 20) + f.read(1)
    except (OSError, EOFError, pa.ArrowInvalid) as e:
        raise ConfigError(f"{flag} {uri}: not a readable table ({type(e).__name__}: {str(e)[:200]})") from None
    lines = [ln for ln in head.splitlines() if ln.strip()]
    if not lines:
        return [], False
    if kind(uri) == "jsonl":
        return _jsonl_header(uri, flag, lines[0]), True
    try:
        lines[0].decode("utf-8")
        names = pacsv.read_csv(io.BytesIO(lines[0] + b"\n"), parse_options=_parse(uri)).column_names
    except UnicodeDecodeError as e:
        raise ConfigError(f"{flag} {uri}: the header line is not valid UTF-8 (byte {e.start}); save the table as UTF-8") from None
    except pa.ArrowInvalid as e:
        raise ConfigError(f"{flag} {uri}: not a readable CSV header ({str(e)[:200]})") from None
    dup = sorted({n for n in names if names.count(n) > 1})
    need(not dup, f"{flag} {uri}: the header names column(s) {', '.join(map(repr, dup[:5]))} more than once")
    return names, len(lines) > 1


def _jsonl_header(uri: str, flag: str, line: bytes) -> list[str]:
    """The keys of a JSON Lines table's first record (its columns)."""
    try:
        record = json.loads(line)
    except ValueError as e:
        raise ConfigError(f"{flag} {uri}: the first line is not a JSON object ({str(e)[:120]})") from None
    need(isinstance(record, dict), f"{flag} {uri}: the first line is not a JSON object (found {type(record).__name__})")
    return [str(k) for k in record]


def _parse(uri: str) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(newlines_in_values=True, delimiter="\t" if kind(uri) == "tsv" else ",")


def _read_file(uri: str, fh, strings: tuple[str, ...]) -> pa.Table:
    """One table file (open as `fh`) by its kind."""
    if is_parquet(uri):
        return pq.read_table(fh)
    if kind(uri) == "jsonl":
        return pajson.read_json(fh)
    return pacsv.read_csv(fh, **csv_options(strings, uri))


def csv_options(strings: tuple[str, ...] = (), uri: str = "") -> dict:
    """pyarrow CSV options: quoted newlines allowed; `strings` columns kept as text exactly as written
    (a seed of 2**70 or an id of 007 must not be turned into a float or an int); only an empty cell
    is missing ("nan", "NA" or "null" are values, which rows then reject or accept)."""
    return dict(parse_options=_parse(uri),
                convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in strings},
                                                     null_values=[""], strings_can_be_null=True))


def read_pandas(uri: str, strings: tuple[str, ...] = (), flag: str = "table", data: bool = False) -> pd.DataFrame:
    """A whole (small) table, or every table of a folder concatenated, as pandas."""
    parts = []
    for f in list_tables(uri, flag, data):
        fs, path = storage.fs_and_path(f)
        try:
            with fs.open(path, "rb", compression="infer") as fh:
                table = _read_file(f, fh, strings)
        except (OSError, EOFError, pa.ArrowInvalid) as e:
            raise ConfigError(f"{flag} {f}: not a readable table ({type(e).__name__}: {str(e)[:200]})") from None
        parts.append(table.to_pandas())
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def _read_ray_parts(files: list[str], num_cpus: float | None, read_parquet, read_csv, **readers):
    """One streaming Ray Dataset over table files: the Parquet files through `read_parquet(paths, filesystem,
    **kw)`, the CSV files through `read_csv(...)` (and TSV/JSONL through `readers[kind]`), each kind read
    apart (kinds may be mixed), then unioned."""
    arrow_fs = storage.arrow_location(files[0])[1]
    readers = {"parquet": read_parquet, "csv": read_csv, **readers}
    kw = {} if num_cpus is None else {"num_cpus": num_cpus}
    parts = []
    for name, read in readers.items():
        paths = [storage.arrow_location(f)[0] for f in files if kind(f) == name]
        need(not paths or read is not None, f"{files[0]}: {name} tables are not read here (expected {KINDS_TEXT})")
        parts += [read(paths, arrow_fs, **kw)] if paths else []
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def read_ray(files: list[str], strings: tuple[str, ...] = (), num_cpus: float | None = None):
    """A streaming Ray Dataset over table files (Parquet, CSV, TSV and JSONL may be mixed: read apart, then
    unioned).

    Callers normalize each batch to one schema afterwards (`map_batches`), since tables differ in types."""
    import ray.data  # here: preflight and the checkpoint set read tables with pandas, without Ray

    # Ray Data's CSV and JSON readers pick compression from the extension (.gz); they need no option here.
    return _read_ray_parts(
        files, num_cpus,
        lambda paths, fs, **kw: ray.data.read_parquet(paths, filesystem=fs, **kw),
        lambda paths, fs, **kw: ray.data.read_csv(paths, filesystem=fs, file_extensions=["csv", "gz"],
                                                  **csv_options(strings), **kw),
        tsv=lambda paths, fs, **kw: ray.data.read_csv(paths, filesystem=fs, file_extensions=["tsv", "gz"],
                                                      **csv_options(strings, paths[0]), **kw),
        jsonl=lambda paths, fs, **kw: ray.data.read_json(paths, filesystem=fs, file_extensions=["jsonl", "gz"],
                                                         lines=True, **kw))


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
