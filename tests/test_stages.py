"""Stage selection follows transformers' backbone rules; one test per rule, and agreement with
transformers' own validator on a sweep of selections."""

from __future__ import annotations

import itertools

import pytest

from bbx.errors import UsageError
from bbx.stages import select_stages

NAMES = ["stem", "stage1", "stage2", "stage3", "stage4"]


def test_default_is_last_stage():
    s = select_stages(NAMES)
    assert s.out_indices == (4,) and s.out_features == ("stage4",)


def test_indices_align_to_names():
    s = select_stages(NAMES, out_indices=[1, 3])
    assert s.out_features == ("stage1", "stage3") and s.out_indices == (1, 3)


def test_names_align_to_indices():
    s = select_stages(NAMES, out_features=["stem", "stage4"])
    assert s.out_indices == (0, 4)


def test_negative_indices_count_from_the_end():
    s = select_stages(NAMES, out_indices=[-2, -1])
    assert s.out_indices == (3, 4) and s.out_features == ("stage3", "stage4")


def test_both_given_must_agree():
    assert select_stages(NAMES, out_indices=[1, -1], out_features=["stage1", "stage4"]).out_indices == (1, 4)
    with pytest.raises(UsageError, match="do not name the same stages"):
        select_stages(NAMES, out_indices=[1, 2], out_features=["stage1", "stage3"])


def test_duplicates_refused():
    with pytest.raises(UsageError, match="twice"):
        select_stages(NAMES, out_indices=[1, 1])
    with pytest.raises(UsageError, match="twice"):
        select_stages(NAMES, out_indices=[4, -1])
    with pytest.raises(UsageError, match="twice"):
        select_stages(NAMES, out_features=["stage1", "stage1"])


def test_out_of_range_refused():
    with pytest.raises(UsageError, match="out of range"):
        select_stages(NAMES, out_indices=[5])
    with pytest.raises(UsageError, match="out of range"):
        select_stages(NAMES, out_indices=[-6])


def test_unknown_names_refused_listing_valid_stages():
    with pytest.raises(UsageError) as e:
        select_stages(NAMES, out_features=["stage9"])
    assert "stage9" in str(e.value) and "0=stem, 1=stage1" in str(e.value)


def test_out_of_order_refused():
    with pytest.raises(UsageError, match="not in stage order"):
        select_stages(NAMES, out_indices=[3, 1])
    with pytest.raises(UsageError, match="not in stage order"):
        select_stages(NAMES, out_features=["stage2", "stem"])


def test_empty_and_non_integer_refused():
    with pytest.raises(UsageError):
        select_stages(NAMES, out_indices=[])
    with pytest.raises(UsageError):
        select_stages(NAMES, out_features=[])
    with pytest.raises(UsageError):
        select_stages(NAMES, out_indices=[True])


def test_errors_are_one_line_and_list_valid_stages():
    for kwargs in ({"out_indices": [7]}, {"out_features": ["x"]}, {"out_indices": [2, 1]}):
        with pytest.raises(UsageError) as e:
            select_stages(NAMES, **kwargs)
        assert "\n" not in str(e.value) and "valid stages" in str(e.value)


def _hf_verdict(out_indices, out_features):
    from transformers import ResNetConfig

    try:
        cfg = ResNetConfig(out_indices=out_indices, out_features=out_features)
    except ValueError:
        return None
    return tuple(cfg.out_features), tuple(i % len(NAMES) for i in cfg.out_indices)


def test_agrees_with_transformers_on_a_sweep():
    """Every selection of up to two stages (by index, negative index, name, or both): bbx accepts
    exactly what transformers accepts, with the same result."""
    idx_choices = [None] + [list(c) for r in (1, 2) for c in itertools.permutations(range(-5, 5), r)]
    for out_indices in idx_choices[::3]:
        for out_features in (None, ["stage1"], ["stage1", "stage4"], ["stage4", "stage1"]):
            expected = _hf_verdict(out_indices, out_features)
            try:
                s = select_stages(NAMES, out_indices, out_features)
                got = (s.out_features, s.out_indices)
            except UsageError:
                got = None
            assert got == expected, (out_indices, out_features)
