"""Builds the bundled default input: a Stack-format parquet shard of the Python standard library.

The standard library is real, permissively licensed (PSF-2.0) Python that is on every machine
with Python. Rows carry The Stack v1 columns; the licence is recorded per row. The same
interpreter version gives a byte-identical file (sorted paths, fixed writer settings).

    python scripts/build_seed_shard.py [--out beam_pipeline/data/stdlib-python.parquet]

`--full` builds the full-size shard that benchmarks and fidelity measurements use instead: every
`.py` file of the standard library and of the running interpreter's site-packages (about 45,000
files, 650 MB of content in a project venv), with `--rows_per_group N` (0: one row group).

    python scripts/build_seed_shard.py --full --rows_per_group 2000 --out /tmp/full-2000.parquet
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


def collect_full(stdlib: pathlib.Path, site: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
    """(repository path, file) for every .py file of the standard library and site-packages."""
    found: dict[str, pathlib.Path] = {}
    for root, prefix in ((stdlib, "Lib/"), (site, "site-packages/")):
        for f in root.rglob("*.py"):
            rel = f.relative_to(root)
            if "__pycache__" in rel.parts or (root == stdlib and rel.parts[0] == "site-packages"):
                continue
            if f.is_file():
                found[prefix + rel.as_posix()] = f
    return sorted(found.items())


def build(out: pathlib.Path, full: bool = False, rows_per_group: int = ROWS_PER_GROUP) -> int:
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    site = pathlib.Path(sysconfig.get_paths()["purelib"])
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
    if full:
        files = collect_full(stdlib, site)
    else:
        files = [("Lib/" + f.relative_to(stdlib).as_posix(), f) for f in collect(stdlib)]
    for repo_path, f in files:
        data = f.read_bytes()
        text = data.decode("utf-8", errors="replace")
        lines = text.splitlines() or [""]
        rows["hexsha"].append(git_blob_sha1(data))
        rows["size"].append(len(data))
        rows["ext"].append("py")
        rows["lang"].append("Python")
        rows["max_stars_repo_path"].append(repo_path)
        rows["max_stars_repo_name"].append(
            "python/cpython" if repo_path.startswith("Lib/") else "site-packages"
        )
        rows["max_stars_repo_head_hexsha"].append(f"v{version}")
        # site-packages files carry their own distributions' licences, not recorded here
        rows["max_stars_repo_licenses"].append(
            ["PSF-2.0"] if repo_path.startswith("Lib/") else ["unknown"]
        )
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
        metadata={
            "source": f"CPython {version} standard library"
            + (" and site-packages" if full else ""),
            "license": "PSF-2.0" if not full else "mixed",
        },
    )
    table = pa.table(rows, schema=schema)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table,
        out,
        row_group_size=rows_per_group or max(table.num_rows, 1),
        compression="zstd",
        write_statistics=False,
    )
    return table.num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="beam_pipeline/data/stdlib-python.parquet")
    parser.add_argument(
        "--full", action="store_true", help="standard library and site-packages, every file"
    )
    parser.add_argument(
        "--rows_per_group", type=int, default=ROWS_PER_GROUP, help="0 writes one row group"
    )
    args = parser.parse_args()
    n = build(pathlib.Path(args.out), full=args.full, rows_per_group=args.rows_per_group)
    print(f"wrote {n} rows to {args.out}")


if __name__ == "__main__":
    main()
