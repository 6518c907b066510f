"""ExtractSeeds: SourceFile -> Seed (method.md §1).

Steps and their report keys:
- `extract`: one file in, one parsed file (its candidate functions: top-level plain, async and
  decorated `def`s with a docstring) or one rejection out. Reasons: empty, not_utf8, binary,
  too_large, syntax_error, too_deep.
- `filter`: one candidate function in, a Seed or a rejection out. Reasons: not_python3,
  no_return_value, too_long, no_parameters, banned_keyword, banned_import.
- `exact_dedup`: identical function text kept once (the copy with the smallest repository,
  path and file hash);
  the others are rejected as `duplicate` with the kept seed's source in `detail`.
- `static_check` (optional, `--static_check`): autoimport + Pyright in batches; reasons
  static_check_failed (detail: Pyright's first errors) and banned_import (an import autoimport
  added). A seed the checker cannot judge even alone is a dead letter.
`SampleSeeds` (`--max_seeds N`, applied by the pipeline after every seed filter): keeps the N
seeds with the smallest ids (a uniform, deterministic sample, since ids are hashes); the rest
are rejected as over_max_seeds.
All rejections go to `rejected/seeds/`, dead letters to `errors/seeds/`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import apache_beam as beam

from beam_pipeline.config import SeedConfig
from beam_pipeline.core import seeds as core
from beam_pipeline.records import DeadLetter, Rejection, Seed, SourceFile, sha1_hex
from beam_pipeline.stages.common import (
    ERRORS,
    MAIN,
    REJECTED,
    Accounting,
    StageFn,
    StageOutputs,
    apply_stage_fn,
    merge_outputs,
)

STAGE = "seeds"


@dataclasses.dataclass(frozen=True)
class ParsedFile:
    """A file's candidate seeds (not yet filtered)."""

    file_id: str
    candidates: tuple[Seed, ...]


class ExtractFunctionsFn(StageFn):
    def __init__(self, config: SeedConfig) -> None:
        super().__init__(STAGE)
        self.config = config

    def handle(self, source: SourceFile) -> Iterator[ParsedFile | Rejection]:
        problem = core.check_file(
            source.content, source.valid_utf8, source.size_bytes, self.config.max_file_bytes
        )
        if problem is not None:
            yield Rejection.of(STAGE, problem[0], source, problem[1])
            return
        extraction = core.extract_functions(source.content, self.config.parser)
        if extraction.reason is not None:
            yield Rejection.of(STAGE, extraction.reason, source, extraction.detail)
            return
        candidates = tuple(
            Seed(
                id=Seed.make_id(fn.text),
                seed=fn.text,
                sha1=sha1_hex(fn.text),
                path=source.path,
                repo_name=source.repo_name,
                stars=source.stars,
                licenses=source.licenses,
                parser=fn.parser,
                file_sha1=source.sha1,
                decorators=fn.decorators,
            )
            for fn in extraction.functions
        )
        yield ParsedFile(file_id=source.id, candidates=candidates)


class FilterSeedFn(StageFn):
    def handle(self, seed: Seed) -> Iterator[Seed | Rejection]:
        problem = core.check_seed(seed.seed)
        if problem is None:
            yield seed
        else:
            yield Rejection.of(STAGE, problem[0], seed, problem[1])


def _provenance(seed: Seed) -> tuple[str, str, str]:
    return (seed.repo_name, seed.path, seed.file_sha1)


class KeepFirstCopyFn(StageFn):
    """(seed id, copies) -> the copy with the smallest provenance; the rest are duplicates."""

    def handle(self, keyed: tuple[str, Iterable[Seed]]) -> Iterator[Seed | Rejection]:
        _, copies = keyed
        ordered = sorted(copies, key=_provenance)
        kept = ordered[0]
        yield kept
        where = "/".join(p for p in _provenance(kept) if p)
        for dup in ordered[1:]:
            yield Rejection.of(STAGE, core.SeedReason.DUPLICATE, dup, f"same text as {where}")


class StaticCheckFn(StageFn):
    """A batch of seeds -> Pyright-clean seeds with their imports added."""

    def handle(self, batch: list[Seed]) -> Iterator[Seed | Rejection | DeadLetter]:
        from beam_pipeline import static_check

        verdicts = static_check.check_with_bisect([s.seed for s in batch])
        for seed, verdict in zip(batch, verdicts, strict=True):
            if isinstance(verdict, static_check.CheckerFailed):
                yield DeadLetter.of(self.stage, seed, str(verdict))
            elif not verdict.clean:
                detail = "; ".join(verdict.errors[:3])[:500]
                yield Rejection.of(STAGE, core.SeedReason.STATIC_CHECK_FAILED, seed, detail)
            else:
                banned = sorted(core.imports_in(verdict.text) & core.BANNED_MODULES)
                if banned:
                    yield Rejection.of(STAGE, core.SeedReason.BANNED_IMPORT, seed, ",".join(banned))
                else:
                    # the id stays that of the extracted text; sha1 follows the text, as the
                    # reference hashes the function after autoimport
                    yield dataclasses.replace(seed, seed=verdict.text, sha1=sha1_hex(verdict.text))


class SampleSeedsFn(StageFn):
    """Keeps seeds whose id is at most the cutoff (the N-th smallest id)."""

    def handle(self, item: tuple[Seed, str | None]) -> Iterator[Seed | Rejection]:
        seed, cutoff = item
        if cutoff is None or seed.id <= cutoff:
            yield seed
        else:
            yield Rejection.of(STAGE, core.SeedReason.OVER_MAX_SEEDS, seed, f"id > {cutoff}")

    def process(self, element: Seed, cutoff: list[str]) -> Iterator[object]:  # type: ignore[override]
        yield from super().process((element, cutoff[0] if cutoff else None))


class SampleSeeds(beam.PTransform):
    """Keeps the `max_seeds` seeds with the smallest ids (uniform, since ids are hashes)."""

    def __init__(self, max_seeds: int, accounting: Accounting | None = None) -> None:
        super().__init__()
        self.max_seeds = max_seeds
        self.accounting = accounting

    def expand(self, seeds: beam.PCollection) -> StageOutputs:
        cutoff = (
            seeds
            | "Ids" >> beam.Map(lambda s: s.id)
            | "SmallestIds" >> beam.combiners.Top.Smallest(self.max_seeds)
            | "Cutoff" >> beam.FlatMap(lambda top: top[-1:])
        )
        sampled = seeds | "SampleSeeds" >> beam.ParDo(
            SampleSeedsFn(STAGE), cutoff=beam.pvalue.AsList(cutoff)
        ).with_outputs(REJECTED, ERRORS, main=MAIN)
        outputs = StageOutputs(sampled[MAIN], sampled[REJECTED], sampled[ERRORS])
        if self.accounting is not None:
            self.accounting.count_stage("seeds.sample", seeds, outputs)
        return outputs


class ExtractSeeds(beam.PTransform):
    def __init__(self, config: SeedConfig, accounting: Accounting | None = None) -> None:
        super().__init__()
        self.config = config
        self.accounting = accounting

    def expand(self, files: beam.PCollection) -> StageOutputs:
        parsed = apply_stage_fn(files, "ExtractFunctions", ExtractFunctionsFn(self.config))
        candidates = parsed.main | "Candidates" >> beam.FlatMap(lambda p: p.candidates)
        filtered = apply_stage_fn(candidates, "FilterSeeds", FilterSeedFn(STAGE))
        grouped = (
            filtered.main
            | "KeyByText" >> beam.Map(lambda s: (s.id, s))
            | "GroupCopies" >> beam.GroupByKey()
        )
        deduped = apply_stage_fn(grouped, "ExactDedup", KeepFirstCopyFn(STAGE))
        steps = [parsed, filtered, deduped]
        acct = self.accounting
        if acct is not None:
            acct.count_stage("seeds.extract", files, parsed)
            acct.count(candidates, "seeds.extract", "functions")
            acct.count_stage("seeds.filter", candidates, filtered)
            acct.count_stage("seeds.exact_dedup", filtered.main, deduped)
        if self.config.static_check:
            size = self.config.static_check_batch
            batches = deduped.main | "BatchForPyright" >> beam.BatchElements(
                min_batch_size=size, max_batch_size=size
            )
            checked = apply_stage_fn(batches, "StaticCheck", StaticCheckFn(STAGE))
            if acct is not None:
                acct.count_stage("seeds.static_check", deduped.main, checked)
            steps.append(checked)
        return merge_outputs("Seeds", *steps)
