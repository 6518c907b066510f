"""Builds the bundled default input: a Stack-format parquet shard of the Python standard library.

The standard library is real, permissively licensed (PSF-2.0) Python that is on every machine
with Python. Rows carry The Stack v1 columns; the licence is recorded per row. The same
interpreter version gives a byte-identical file (sorted paths, fixed writer settings).

    python scripts/build_seed_shard.py [--out beam_pipeline/data/stdlib-python.parquet]
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import platform
import sysconfig

import pyarrow as pa
import pyarrow.parquet as pq

SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "turtledemo", "__pycache__"}
# Real Python 2 code shipped with the standard library, kept so the shard exercises recovery.
PY2_SAMPLES = ("lib2to3/tests/data/py2_test_grammar.py",)
ROWS_PER_GROUP = 64


def git_blob_sha1(data: bytes) -> str:
    """The Stack's `hexsha` is the git blob id of the file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def collect(stdlib: pathlib.Path) -> list[pathlib.Path]:
    files = [
        f for f in stdlib.rglob("*.py") if not SKIP_PARTS.intersection(f.relative_to(stdlib).parts)
    ]
    files += [stdlib / p for p in PY2_SAMPLES if (stdlib / p).exists()]
    return sorted(set(files), key=lambda f: f.relative_to(stdlib).as_posix())


def build(out: pathlib.Path) -> int:
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    version = platform.python_version()
    rows: dict[str, list] = {
        k: []
        for k in (
            "hexsha",
            "size",
            "ext",
            "lang",
            "max_stars_repo_path",
            "max_stars_repo_name",
            "max_stars_repo_head_hexsha",
            "max_stars_repo_licenses",
            "max_stars_count",
            "content",
            "avg_line_length",
            "max_line_length",
            "alphanum_fraction",
        )
    }
    for f in collect(stdlib):
        data = f.read_bytes()
        text = data.decode("utf-8", errors="replace")
        lines = text.splitlines() or [""]
        rows["hexsha"].append(git_blob_sha1(data))
        rows["size"].append(len(data))
        rows["ext"].append("py")
        rows["lang"].append("Python")
        rows["max_stars_repo_path"].append("Lib/" + f.relative_to(stdlib).as_posix())
        rows["max_stars_repo_name"].append("python/cpython")
        rows["max_stars_repo_head_hexsha"].append(f"v{version}")
        rows["max_stars_repo_licenses"].append(["PSF-2.0"])
        rows["max_stars_count"].append(None)
        rows["content"].append(text)
        rows["avg_line_length"].append(sum(map(len, lines)) / len(lines))
        rows["max_line_length"].append(max(map(len, lines)))
        rows["alphanum_fraction"].append(sum(c.isalnum() for c in text) / max(len(text), 1))
    schema = pa.schema(
        [
            ("hexsha", pa.string()),
            ("size", pa.int64()),
            ("ext", pa.string()),
            ("lang", pa.string()),
            ("max_stars_repo_path", pa.string()),
            ("max_stars_repo_name", pa.string()),
            ("max_stars_repo_head_hexsha", pa.string()),
            ("max_stars_repo_licenses", pa.list_(pa.string())),
            ("max_stars_count", pa.int64()),
            ("content", pa.string()),
            ("avg_line_length", pa.float64()),
            ("max_line_length", pa.int64()),
            ("alphanum_fraction", pa.float64()),
        ],
        metadata={"source": f"CPython {version} standard library", "license": "PSF-2.0"},
    )
    table = pa.table(rows, schema=schema)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table, out, row_group_size=ROWS_PER_GROUP, compression="zstd", write_statistics=False
    )
    return table.num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="beam_pipeline/data/stdlib-python.parquet")
    args = parser.parse_args()
    n = build(pathlib.Path(args.out))
    print(f"wrote {n} rows to {args.out}")


if __name__ == "__main__":
    main()
