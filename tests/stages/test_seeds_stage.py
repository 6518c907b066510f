"""ExtractSeeds on TestPipeline: main and rejected outputs, exact reasons."""

from __future__ import annotations

import hashlib

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.config import SeedConfig
from beam_pipeline.records import Seed, SourceFile
from beam_pipeline.stages.seeds import ExtractSeeds

GOOD = 'def add(a, b):\n    """Adds."""\n    return a + b'
NO_RET = 'def show(a):\n    """Shows."""\n    print(a)'


def _file(path: str, content: str, valid: bool = True) -> SourceFile:
    return SourceFile(
        id=SourceFile.make_id(path, path, "r"),
        content=content,
        path=path,
        repo_name="r",
        sha1=path,
        size_bytes=len(content.encode("utf-8", "surrogateescape")),
        valid_utf8=valid,
    )


def test_extract_seeds_main_and_rejected() -> None:
    files = [
        _file("a.py", GOOD + "\n\n" + NO_RET + "\n"),
        _file("b.py", GOOD + "\n"),  # exact duplicate of a.py's add
        _file("c.py", ""),
        _file("d.py", "x = '\udce9'", valid=False),
    ]
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(files) | ExtractSeeds(SeedConfig())
        assert_that(
            out.main | "MainKeys" >> beam.Map(lambda s: (s.path, s.seed)),
            equal_to([("a.py", GOOD)]),
            label="Main",
        )
        assert_that(
            out.rejected | "RejKeys" >> beam.Map(lambda r: (r.reason, r.detail)),
            equal_to(
                [
                    ("no_return_value", ""),
                    ("duplicate", "same text as r/a.py/a.py"),
                    ("empty", ""),
                    ("not_utf8", "content is not valid UTF-8"),
                ]
            ),
            label="Rejected",
        )
        assert_that(out.errors, equal_to([]), label="Errors")


DECORATED = '@lru_cache(maxsize=8)\ndef square(x):\n    """Squares."""\n    return x * x'
ASYNC = 'async def fetch(url):\n    """Fetches."""\n    return await get(url)'


def test_seed_fields_sha1_of_text_file_hash_and_decorators() -> None:
    # the same function text in two files, once decorated: one seed, the other a duplicate
    files = [
        _file("a.py", DECORATED + "\n\n" + ASYNC + "\n"),
        _file("b.py", DECORATED.split("\n", 1)[1] + "\n"),
    ]
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(files) | ExtractSeeds(SeedConfig())
        assert_that(
            out.main
            | "Fields"
            >> beam.Map(lambda s: (s.seed, s.sha1, s.file_sha1, s.path, s.decorators, s.id)),
            equal_to(
                [
                    (
                        text,
                        hashlib.sha1(text.encode()).hexdigest(),
                        "a.py",
                        "a.py",
                        decorators,
                        Seed.make_id(text),
                    )
                    for text, decorators in [
                        (DECORATED.split("\n", 1)[1], ("@lru_cache(maxsize=8)",)),
                        (ASYNC, ()),
                    ]
                ]
            ),
            label="Main",
        )
        assert_that(
            out.rejected | "Reasons" >> beam.Map(lambda r: (r.reason, r.detail)),
            equal_to([("duplicate", "same text as r/a.py/a.py")]),
            label="Rejected",
        )
        assert_that(out.errors, equal_to([]), label="Errors")
