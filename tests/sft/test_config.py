"""Recipes: YAML loading, validation, overrides; every shipped recipe is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from sft.config import load_recipe, recipe_from_dict

RECIPES = sorted((Path(__file__).resolve().parents[2] / "sft" / "recipes").glob("*.yaml"))


def _raw(**training: object) -> dict:
    return {
        "model": {"name_or_path": "m"},
        "data": {"path": "d.jsonl"},
        "training": {"output_dir": "out", **training},
    }


def test_defaults_are_the_method_recipe() -> None:
    recipe = recipe_from_dict(_raw())
    assert recipe.training.learning_rate == 1e-5
    assert recipe.training.warmup_ratio == 0.05
    assert recipe.training.global_batch_size == 64
    assert recipe.data.max_length == 1280


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_load(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.description


def test_there_are_shipped_recipes() -> None:
    assert len(RECIPES) >= 2


def test_overrides_are_parsed_as_yaml(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "model: {name_or_path: m}\ndata: {path: d.jsonl}\ntraining: {output_dir: out}\n"
    )
    recipe = load_recipe(
        path,
        ["training.max_steps=4", "training.packing=true", "data.limit=", "model.precision=fp32"],
    )
    assert recipe.training.max_steps == 4 and recipe.training.packing is True
    assert recipe.data.limit is None and recipe.model.precision == "fp32"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_raw(learning_rate=0), "learning_rate"),
        (_raw(global_batch_size=0), "global_batch_size"),
        (_raw(strategy="zero3"), "strategy"),
        (_raw(unknown_key=1), "unknown key"),
        ({**_raw(), "data": {"path": "a", "hub_dataset": "b"}}, "exactly one"),
        ({**_raw(), "data": {}}, "exactly one"),
        ({**_raw(), "model": {"name_or_path": "m", "precision": "fp8"}}, "precision"),
        ({"model": {"name_or_path": "m"}, "data": {"path": "d"}}, "missing"),
    ],
)
def test_invalid_recipes_fail_with_a_clear_message(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        recipe_from_dict(raw)


@pytest.mark.parametrize("item", ["max_steps=4", "training.max_steps", "nope.key=1"])
def test_malformed_overrides_are_refused(tmp_path: Path, item: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("model: {name_or_path: m}\ndata: {path: d}\ntraining: {output_dir: o}\n")
    with pytest.raises(ValueError, match=r"section\.key=value"):
        load_recipe(path, [item])
