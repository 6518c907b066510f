"""NearDedup as a Beam stage: quality, exactness, determinism, accounting."""

from __future__ import annotations

import collections
import json
import pathlib
import random
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.core.lsh import band_keys, optimal_params
from beam_pipeline.core.minhash import MinHasher, true_jaccard
from beam_pipeline.records import Rejection, Sample, Seed
from beam_pipeline.stages.common import Accounting, WriteStageOutputs
from beam_pipeline.stages.dedup import NearDedup
from tests.conftest import FNAPI, MULTIPROCESS
from tests.helpers import make_sample, make_seed, read_jsonl_dir

pytestmark = pytest.mark.timeout(300)  # dedup on two worker processes

STAGE = "near"


def _seed(text: Any, record_id: str | None = None) -> Seed:
    return make_seed(seed=text, **({"id": record_id} if record_id else {}))


def _pair(similarity: float, tag: str, length: int = 120) -> tuple[str, str]:
    """Two texts of unique tokens whose shingle Jaccard is close to `similarity`."""
    grams = length - 4
    shared = round(2 * grams * similarity / (1 + similarity))
    prefix = [f"{tag}p{i}" for i in range(shared + 4)]
    own = length - len(prefix)
    return (
        " ".join(prefix + [f"{tag}a{i}" for i in range(own)]),
        " ".join(prefix + [f"{tag}b{i}" for i in range(own)]),
    )


class Corpus:
    """Planted pairs at known similarities, a 1,000-document chain, and awkward records."""

    def __init__(self) -> None:
        rng = random.Random(20241031)
        self.records: list[Seed] = []
        self.pairs: list[tuple[str, str, float]] = []
        for index in range(150):
            for low, high, tag in ((0.82, 0.97, "h"), (0.2, 0.48, "l")):
                text_a, text_b = _pair(rng.uniform(low, high), f"{tag}{index}x")
                a, b = _seed(text_a), _seed(text_b)
                self.records += [a, b]
                self.pairs.append((a.id, b.id, true_jaccard(text_a, text_b)))
        # A chain: each document is the previous one shifted by three tokens (Jaccard ~0.95),
        # the two ends share nothing.
        stream = [f"c{i}" for i in range(3 * 1000 + 150)]
        self.chain = [_seed(" ".join(stream[3 * i : 3 * i + 150])) for i in range(1000)]
        self.records += self.chain
        self.short = [_seed("too short"), _seed("Too short!", "short-2"), _seed("")]
        self.records += self.short
        twin = _seed("the same record twice " * 3)
        self.records += [twin, twin]
        self.twin = twin
        self.broken = _seed(12345, "broken")  # not text: a dead letter
        self.records.append(self.broken)
        rng.shuffle(self.records)


def reference_dedup(records: list[Seed], threshold: float = 0.7) -> dict[str, str]:
    """id -> kept id for every duplicate: union-find over the same band collisions."""
    texts = {r.id: r.seed for r in records if isinstance(r.seed, str)}
    ids = sorted(texts)
    hasher = MinHasher()
    signatures, too_short = hasher.signatures([texts[i] for i in ids])
    bands, rows = optimal_params(threshold, 250)
    parent = {i: i for i in ids}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    buckets = collections.defaultdict(list)
    for doc_id, keys, short in zip(ids, band_keys(signatures, bands, rows), too_short, strict=True):
        if not short:
            for key in keys:
                buckets[key].append(doc_id)
    for members in buckets.values():
        for other in members[1:]:
            ra, rb = find(members[0]), find(other)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return {i: find(i) for i in ids if find(i) != i}


def run_dedup(
    records: list[Any], argv: list[str], out: pathlib.Path, transform: beam.PTransform
) -> dict[str, Any]:
    with beam.Pipeline(options=PipelineOptions(argv)) as pipeline:
        outputs = pipeline | beam.Create(records, reshuffle=False) | transform
        outputs | WriteStageOutputs(str(out), "dedup", num_shards=1)
        if transform.accounting is not None:
            transform.accounting.write(pipeline, str(out / "_run" / "counts"))
    counts: dict[str, int] = collections.Counter()
    for path in (out / "_run").glob("counts*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            counts[row["key"]] += row["count"]
    return {
        "main": read_jsonl_dir(out / "dedup"),
        "rejected": read_jsonl_dir(out / "rejected" / "dedup"),
        "errors": read_jsonl_dir(out / "errors" / "dedup"),
        "counts": dict(counts),
    }


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus()


@pytest.fixture(scope="module")
def fnapi_result(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    transform = NearDedup(STAGE, "seed", threshold=0.7, accounting=Accounting())
    return run_dedup(corpus.records, FNAPI, tmp_path_factory.mktemp("fnapi"), transform)


def _merged_into(result: dict[str, Any]) -> dict[str, str]:
    return {r["id"]: r["detail"] for r in result["rejected"]}


def test_kept_set_equals_union_find_over_band_collisions(
    corpus: Corpus, fnapi_result: dict[str, Any]
) -> None:
    expected = reference_dedup(corpus.records)
    rejected = [r for r in fnapi_result["rejected"] if r["id"] != corpus.twin.id]
    assert {r["reason"] for r in rejected} == {"near_duplicate"}
    assert {r["id"]: r["detail"] for r in rejected} == expected
    kept = {r["id"] for r in fnapi_result["main"]}
    assert kept.isdisjoint(expected)
    assert set(expected.values()) <= kept


def test_recall_and_false_merges_at_threshold_0_7(
    corpus: Corpus, fnapi_result: dict[str, Any]
) -> None:
    merged_into = _merged_into(fnapi_result)

    def cluster(doc_id: str) -> str:
        return merged_into.get(doc_id, doc_id)

    high = [(a, b) for a, b, sim in corpus.pairs if sim > 0.8]
    low = [(a, b) for a, b, sim in corpus.pairs if sim < 0.5]
    assert len(high) >= 140 and len(low) >= 140
    recall = sum(cluster(a) == cluster(b) for a, b in high) / len(high)
    false_merges = sum(cluster(a) == cluster(b) for a, b in low) / len(low)
    assert recall >= 0.95, recall
    assert false_merges <= 0.05, false_merges
    # The member kept is always the smaller id.
    for a, b in high:
        if cluster(a) == cluster(b):
            assert cluster(a) == min(a, b)


def test_a_chain_of_1000_near_duplicates_collapses_to_its_smallest_id(
    corpus: Corpus, fnapi_result: dict[str, Any]
) -> None:
    chain_ids = {r.id for r in corpus.chain}
    assert true_jaccard(corpus.chain[0].seed, corpus.chain[-1].seed) == 0.0
    kept = {r["id"] for r in fnapi_result["main"]} & chain_ids
    assert kept == {min(chain_ids)}
    merged_into = _merged_into(fnapi_result)
    assert {merged_into[i] for i in chain_ids - kept} == kept


def test_short_twin_and_broken_records(corpus: Corpus, fnapi_result: dict[str, Any]) -> None:
    kept = [r for r in fnapi_result["main"]]
    kept_ids = [r["id"] for r in kept]
    # Short texts pass through untouched, even when they look alike.
    for record in corpus.short:
        assert kept_ids.count(record.id) == 1
    # Two records with one id are one node: one copy kept, one rejected naming the same id.
    assert kept_ids.count(corpus.twin.id) == 1
    twins = [r for r in fnapi_result["rejected"] if r["id"] == corpus.twin.id]
    assert len(twins) == 1 and twins[0]["detail"] == corpus.twin.id
    assert [e["id"] for e in fnapi_result["errors"]] == ["broken"]
    assert "TypeError" in fnapi_result["errors"][0]["error"]


def test_accounting_balances(corpus: Corpus, fnapi_result: dict[str, Any]) -> None:
    counts = fnapi_result["counts"]
    assert counts[f"{STAGE}/in"] == len(corpus.records)
    assert counts[f"{STAGE}/in"] == (
        counts[f"{STAGE}/out"] + counts[f"{STAGE}/rejected"] + counts[f"{STAGE}/errors"]
    )
    assert counts[f"{STAGE}/too_short_for_dedup"] == len(corpus.short)
    assert counts[f"{STAGE}/rejected/near_duplicate"] == len(fnapi_result["rejected"])
    assert counts[f"{STAGE}/errors"] == 1
    # The 1,000-node chain (ids in random order along it) needs about 10 star rounds; after the
    # default 6 only a handful of its nodes are left for the one-worker step.
    assert counts[f"{STAGE}/components_rounds"] == 6
    assert 0 < counts[f"{STAGE}/components_leftover_nodes"] < 20


def test_same_result_on_two_worker_processes(
    corpus: Corpus, fnapi_result: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    transform = NearDedup(STAGE, "seed", threshold=0.7)
    multi = run_dedup(corpus.records, MULTIPROCESS, tmp_path, transform)
    assert sorted(r["id"] for r in multi["main"]) == sorted(r["id"] for r in fnapi_result["main"])
    assert sorted((r["id"], r["detail"]) for r in multi["rejected"]) == sorted(
        (r["id"], r["detail"]) for r in fnapi_result["rejected"]
    )


def _random_id_chain(length: int, seed: int) -> list[Seed]:
    """A chain of near-duplicates whose ids are in random order along the chain, so the star
    rounds need many rounds to settle it (ids in chain order settle in one or two)."""
    rng = random.Random(seed)
    stream = [f"q{seed}_{i}" for i in range(3 * length + 150)]
    ids = [f"r{seed}_{n:05d}" for n in rng.sample(range(100_000), length)]
    return [
        _seed(" ".join(stream[3 * i : 3 * i + 150]), record_id) for i, record_id in enumerate(ids)
    ]


def test_rounds_cut_short_are_finished_with_the_same_result(
    corpus: Corpus, tmp_path: pathlib.Path
) -> None:
    records = corpus.chain + _random_id_chain(300, seed=1) + _random_id_chain(40, seed=2)
    records += [_seed(t) for pair in (_pair(0.9, "s1"), _pair(0.92, "s2")) for t in pair]
    expected = reference_dedup(records)
    results = {
        rounds: run_dedup(
            records,
            FNAPI,
            tmp_path / str(rounds),
            NearDedup(STAGE, "seed", max_rounds=rounds, accounting=Accounting()),
        )
        for rounds in (1, 2, 24)
    }
    for rounds, result in results.items():
        assert {r["id"]: r["detail"] for r in result["rejected"]} == expected, rounds
        assert len(result["main"]) + len(expected) == len(records)
        counts = result["counts"]
        assert counts[f"{STAGE}/in"] == counts[f"{STAGE}/out"] + counts[f"{STAGE}/rejected"]
    # Three chains collapse to their smallest ids, the two planted pairs to theirs.
    assert len(results[24]["main"]) == 5
    full = results[24]["counts"]
    # Random ids along a 300-node chain take several rounds; then nothing is left over, and
    # the rounds after the settling one receive nothing.
    assert 3 <= full[f"{STAGE}/components_rounds"] < 24
    assert full[f"{STAGE}/components_leftover_nodes"] == 0
    for rounds in (1, 2):
        counts = results[rounds]["counts"]
        assert counts[f"{STAGE}/components_rounds"] == rounds
        # The leaves are resolved by a join; fewer nodes than the graph meet on one worker.
        assert 0 < counts[f"{STAGE}/components_leftover_nodes"] < len(expected)
    assert (
        results[1]["counts"][f"{STAGE}/components_leftover_nodes"]
        >= results[2]["counts"][f"{STAGE}/components_leftover_nodes"]
    )


def _sample(index: int, instruction: str, response: str) -> Sample:
    return make_sample(f"i{index:03d}", instruction=instruction, response=response)


def code_representation(sample: Sample) -> str:
    """Stands in for the selection stage's code view: the response's second paragraph."""
    parts = sample.response.split("\n\n")
    return parts[1] if len(parts) > 1 else ""


def test_three_passes_in_sequence() -> None:
    words = [f"tok{i}" for i in range(2000)]

    def prose(start: int, tag: str = "") -> str:
        return " ".join(words[start : start + 120]) + tag

    def code(start: int) -> str:
        return " ".join(words[start : start + 8])

    samples = [
        _sample(0, prose(0), prose(200) + "\n\n" + code(1900)),
        _sample(1, prose(0, " extra"), prose(400) + "\n\n" + code(1910)),  # instruction of 0
        _sample(2, prose(600), prose(200, " more") + "\n\n" + code(1900)),  # response of 0
        _sample(3, prose(800), prose(1000) + "\n\n" + code(1900)),  # code of 0
        _sample(4, "hi", "short\n\nshort"),
    ]
    passes = NearDedup(
        "final.near_dedup",
        ("instruction", "response", code_representation),
        max_rounds=3,
    )
    expected_rejections = [
        ("i001.0", "final.near_dedup.instruction", "i000.0"),
        ("i002.0", "final.near_dedup.response", "i000.0"),
        ("i003.0", "final.near_dedup.code_representation", "i000.0"),
    ]
    with TestPipeline(argv=FNAPI) as pipeline:
        outputs = pipeline | beam.Create(samples) | passes
        assert_that(
            outputs.main | beam.Map(lambda s: s.id),
            equal_to(["i000.0", "i004.0"]),
            label="Kept",
        )
        assert_that(
            outputs.rejected | beam.Map(lambda r: (r.id, r.stage, r.detail)),
            equal_to(expected_rejections),
            label="Rejected",
        )
        assert_that(outputs.errors, equal_to([]), label="NoErrors")


def test_seed_threshold_0_5_merges_pairs_that_0_7_keeps() -> None:
    records = []
    for index in range(40):
        text_a, text_b = _pair(0.65, f"m{index}x")
        records += [_seed(text_a), _seed(text_b)]
    with TestPipeline(argv=FNAPI) as pipeline:
        docs = pipeline | beam.Create(records)
        loose = docs | "Loose" >> NearDedup("seeds", "seed", threshold=0.5, max_rounds=2)
        strict = docs | "Strict" >> NearDedup("final", "seed", threshold=0.7, max_rounds=2)

        def check(expected_range: tuple[int, int]) -> Any:
            def _check(counts: list[int]) -> None:
                low, high = expected_range
                assert low <= counts[0] <= high, counts

            return _check

        # At Jaccard 0.65, 41x6 bands catch a pair with p=0.96, 25x10 bands with p=0.29.
        loose_count = loose.rejected | "CountLoose" >> beam.combiners.Count.Globally()
        strict_count = strict.rejected | "CountStrict" >> beam.combiners.Count.Globally()
        assert_that(loose_count, check((34, 40)), label="LooseMergesMost")
        assert_that(strict_count, check((2, 22)), label="StrictMergesFew")


def test_rejections_carry_an_excerpt_of_the_record() -> None:
    text = " ".join(f"w{i}" for i in range(30))
    records = [_seed(text, "x2"), _seed(text + " w0", "x1")]
    with TestPipeline(argv=FNAPI) as pipeline:
        outputs = pipeline | beam.Create(records) | NearDedup("s", "seed", max_rounds=2)
        assert_that(
            outputs.rejected
            | beam.Map(lambda r: (r.id, r.detail, Seed.from_json(r.excerpt).seed == text)),
            equal_to([("x2", "x1", True)]),
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"text": ()},
        {"text": "seed", "threshold": 1.0},
        {"text": "seed", "scheme": "affine64"},
        {"text": "seed", "max_rounds": 0},
        {"text": "seed", "bands_rows": (30, 10)},
    ],
)
def test_invalid_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        NearDedup("s", **kwargs)


def test_rejection_type_is_the_shared_record() -> None:
    rejection = Rejection.of("s", "near_duplicate", _seed("abc", "z"), "y")
    assert (rejection.id, rejection.detail) == ("z", "y")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_larger_corpus_same_on_both_runners_and_equal_to_union_find(
    tmp_path: pathlib.Path,
) -> None:
    """13,334 functions: many signature batches, every band group used."""
    rng = random.Random(5)
    records = []
    for index in range(10_000):
        body = " ".join(f"v{rng.randint(0, 5000)}" for _ in range(rng.randint(20, 120)))
        records.append(_seed(f"def f{index}(x):\n    return {body}"))
        if index % 3 == 0:
            words = body.split()
            words[rng.randrange(len(words))] = "changed"
            records.append(_seed(f"def f{index}(x):\n    return {' '.join(words)}"))
    expected = reference_dedup(records)
    results = [
        run_dedup(records, argv, tmp_path / name, NearDedup(STAGE, "seed"))
        for name, argv in (("fnapi", FNAPI), ("multi", MULTIPROCESS))
    ]
    for result in results:
        assert {r["id"]: r["detail"] for r in result["rejected"]} == expected
        assert len(result["main"]) + len(expected) == len(records)
    assert len(expected) > 3000
