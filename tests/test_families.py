"""One contract over every registered family and every catalog row (timm's tests/test_models.py
runs one suite over every model): rows build, stage metadata matches a real forward, the forward
stops after the last selected stage, loading is strict and names what does not fit, completion
and inspect name the stages. Family test files keep only what is specific to the family."""

from __future__ import annotations

import math

import pytest
import torch

from bbx import registry, weights
from bbx.checkpoints import recognise
from bbx.cli._complete import stage_names_of_config, stage_names_of_model
from bbx.errors import ModelError
from bbx.family import MAX_PARAMETERS, STAGE_NORMS, map_shapes
from bbx.inspection import inspect_model
from bbx.preprocess import Preprocess
from tests.util import LivePeak, state_numbers

FAMILIES = registry.families()
ROWS = registry.family_rows()  # task checkpoints' rows have their own contract (tests/test_tasks.py)
TINY = [(fam, mt) for fam in FAMILIES for mt in fam.model_types]


def _tiny_model(fam, model_type, **kw):
    torch.manual_seed(0)
    return fam.build(fam.tiny_config(model_type), **kw).eval()


@pytest.mark.parametrize("row", ROWS, ids=[r.alias for r in ROWS])
def test_catalog_rows_build_on_the_meta_device(row):
    ck = recognise(row.config_dict(), row.preprocessor_dict())
    settings = ck.settings()
    assert ck.family.catalog and row in ck.family.catalog
    with torch.device("meta"):
        model = ck.family.build(ck.config)
    assert model.stage_names == list(row.stage_names) == settings.stage_names()
    assert [(s.channels, s.stride) for s in model.stage_specs] == [(s.channels, s.stride) for s in settings.stages()]
    pre = Preprocess.from_checkpoint(ck)
    assert pre.output_size is not None, "a public checkpoint's preprocessing gives one size"
    shapes = map_shapes(settings, pre.output_size)
    assert [s[0] for s in shapes] == [s.channels for s in settings.stages()]
    # inspect and completion answer from the catalog alone
    assert [s.name for s in inspect_model(row.alias).stages] == list(row.stage_names)
    assert stage_names_of_model(row.alias) == list(row.stage_names)
    assert stage_names_of_config(row.config_dict()) == list(row.stage_names)


@pytest.mark.parametrize(("fam", "model_type"), TINY, ids=[mt for _, mt in TINY])
def test_stage_metadata_matches_a_real_forward(fam, model_type):
    model = _tiny_model(fam, model_type)
    model.select(out_indices=list(range(len(model.stage_names))))
    settings = fam.parse(fam.tiny_config(model_type))
    assert model.stage_names == settings.stage_names() == stage_names_of_config(fam.tiny_config(model_type))
    for size in ((64, 64), (77, 101)):
        with torch.no_grad():
            maps = model(torch.randn(2, 3, *size))
        assert [tuple(m.shape[1:]) for m in maps] == map_shapes(settings, size)
        for m, spec in zip(maps, model.stage_specs):
            assert m.shape[0] == 2 and m.shape[1] == spec.channels and m.is_contiguous()
            # the stride is the reduction: the map covers the input once, up to padding
            for side, n in zip(size, m.shape[2:]):
                assert side // spec.stride <= n <= math.ceil(side / spec.stride), (spec, size, m.shape)


@pytest.mark.parametrize(("fam", "model_type"), TINY, ids=[mt for _, mt in TINY])
def test_forward_stops_after_the_last_selected_stage(fam, model_type):
    model = _tiny_model(fam, model_type)
    ran: list[str] = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            module.register_forward_hook(lambda *_, name=name: ran.append(name))
    counts = []
    for last in range(len(model.stage_names)):
        ran.clear()
        model.select(out_indices=[last])
        with torch.no_grad():
            model(torch.randn(1, 3, 64, 64))
        counts.append(len(ran))
    assert counts == sorted(counts) and counts[0] < counts[-1], counts


@pytest.mark.parametrize(("fam", "model_type"), TINY, ids=[mt for _, mt in TINY])
def test_strict_loading_names_missing_and_unexpected_keys(fam, model_type):
    model = _tiny_model(fam, model_type)
    state = dict(model.state_dict())
    required = [k for k in state if k not in model.optional_keys and not k.endswith("num_batches_tracked")]
    gone = required[len(required) // 2]
    target = _tiny_model(fam, model_type)
    broken = {k: v for k, v in state.items() if k != gone} | {"not.a.weight": torch.zeros(2)}
    with pytest.raises(ModelError) as e:
        weights.load_strict(target, broken, source="test")
    message = str(e.value)
    assert gone in message and "not.a.weight" in message and "\n" not in message
    weights.load_strict(target, state, source="test")  # the whole state loads


@pytest.mark.parametrize("fam", FAMILIES, ids=[f.name for f in FAMILIES])
def test_family_record_is_complete(fam):
    assert fam.model_types and fam.title and fam.processor
    assert set(STAGE_NORMS) <= set(fam.stage_norms)
    assert fam.stage_norms["hf"], "say what the default stage norm does"
    for mt in fam.model_types:
        assert registry.family_of(mt) is fam
        fam.parse(fam.tiny_config(mt))
    assert all(r.model_type in fam.model_types for r in fam.catalog)
    with torch.device("meta"):
        model = fam.build(fam.tiny_config())
    assert not any("classifier" in k or "head" in k.split(".")[0] for k in model.state_dict()), "no task heads"


def test_names_are_unique_across_the_catalog():
    names = [n for r in registry.checkpoints() for n in {x.lower() for x in r.names}]
    assert len(names) == len(set(names))
    assert all(registry.lookup(n) is not None for n in names)


# --- memory: what a config implies, honestly -------------------------------------------------------


def _variants(fam, model_type):
    """The tiny config, and variants of it: each switch flipped, each size-like number grown."""
    import dataclasses
    import typing

    base = fam.tiny_config(model_type)
    yield base
    hints = typing.get_type_hints(fam.settings)
    settings = fam.parse(base)
    for f in dataclasses.fields(fam.settings):
        value = getattr(settings, f.name)
        if hints[f.name] is bool:
            yield base | {f.name: not value}
        elif hints[f.name] is int and f.metadata.get("hi") and f.name not in ("image_size",):
            yield base | {f.name: value + 1}
            yield base | {f.name: value * 2 + 1}


@pytest.mark.parametrize(("fam", "model_type"), TINY, ids=[mt for _, mt in TINY])
def test_parameter_count_is_exactly_the_state_of_a_real_build(fam, model_type):
    """parameter_count() must be what a build holds, number for number: it is what refuses a
    config before anything is allocated, so a family must not guess."""
    checked = 0
    for config in _variants(fam, model_type):
        try:
            settings = fam.parse(config)
        except ModelError:
            continue  # a variant the family refuses (heads that no longer divide the width, ...)
        with torch.device("meta"):
            model = fam.build(config)
        assert settings.parameter_count() == state_numbers(model), config
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("row", ROWS, ids=[r.alias for r in ROWS])
def test_parameter_count_of_every_catalog_row(row):
    ck = recognise(row.config_dict(), row.preprocessor_dict())
    with torch.device("meta"):
        model = ck.family.build(ck.config)
    assert ck.settings().parameter_count() == state_numbers(model)


@pytest.mark.parametrize(("fam", "model_type"), TINY, ids=[mt for _, mt in TINY])
def test_activation_estimate_covers_a_real_forward_and_is_not_inflated(fam, model_type):
    """What a forward really holds at its peak (every tensor it creates, measured as it runs,
    with and without the inference rewrites) lies below the estimate, and the estimate's
    activations and workspace are at most eight times it (the weights are counted exactly apart:
    in a tiny config they can outweigh the activations)."""
    from bbx.nn import kernels

    kernels.choice(torch.float32)  # the kernel probe: once a process, on tensors of its own fixed sizes
    config = fam.tiny_config(model_type)
    settings = fam.parse(config)
    model = _tiny_model(fam, model_type)
    model.select(out_indices=list(range(len(model.stage_names))))
    for fused in (False, True):
        if fused:
            model.optimize_for_inference(fuse_kernels=True)
        for size in ((64, 64), (77, 101)):
            for batch in (1, 3):
                x = torch.randn(batch, 3, *size)
                with torch.inference_mode(), LivePeak() as live:
                    maps = model(x)
                del maps
                activations = batch * settings.activation_count(size) + settings.workspace_count(size)
                # weights once more: fused kernels and autocast may keep a converted copy
                estimate = activations + settings.parameter_count()
                measured = live.peak / 4
                assert measured <= estimate and activations <= 8 * measured, (
                    fused,
                    size,
                    batch,
                    measured,
                    activations,
                    estimate,
                )


def _size_fields(fam):
    import dataclasses
    import typing

    hints = typing.get_type_hints(fam.settings)
    for f in dataclasses.fields(fam.settings):
        hi = f.metadata.get("hi")
        if hi is not None and (hints[f.name] in (int, float) or typing.get_origin(hints[f.name]) is tuple):
            yield f.name, hints[f.name], hi


@pytest.mark.parametrize(("fam", "model_type"), TINY, ids=[mt for _, mt in TINY])
def test_every_size_at_its_limit_is_refused_or_estimated_before_anything_is_built(fam, model_type, monkeypatch):
    """Each size-like field of the family at the top of its range (and all of them at once) is
    either refused as the config is read, or gets an estimate; a model plan then refuses, in one
    line with exit 4, whatever would not fit a machine of 16 GB, and nothing is ever built."""
    import bbx.runtime
    from bbx import hub
    from bbx.errors import BbxError
    from bbx.plan import check_memory, model_plan

    monkeypatch.setattr(bbx.runtime, "machine_memory", lambda: 16 * 10**9)
    monkeypatch.setattr(type(fam), "build", lambda *a, **k: pytest.fail("nothing may be built"))
    base = fam.tiny_config(model_type)
    current = fam.parse(base)
    grown = dict(base)
    configs = []
    for name, hint, hi in _size_fields(fam):
        value = getattr(current, name)
        big = [hi] * len(value) if isinstance(value, tuple) else (int(hi) if hint is int else float(hi))
        configs.append(base | {name: big})
        grown[name] = big
    configs.append(grown)
    refused = 0
    for config in configs:
        try:
            settings = fam.parse(config)
        except ModelError as e:
            assert "\n" not in e.message
            refused += 1
            continue
        assert settings.parameter_count() <= MAX_PARAMETERS
        ref = hub.ModelRef(given="x", source="folder", spec=recognise(config, None, "config.json"))
        try:
            mp = model_plan(ref)  # the config's own input size, one image: exit 4 if it does not fit
        except BbxError as e:
            assert e.exit_code == 4 and "\n" not in e.message, e.message
            refused += 1
            continue
        try:
            check_memory(ref, settings, mp.input_size, batch=32)
        except BbxError as e:  # only the batch is too large: a usage error
            assert e.exit_code == 2 and "--batch-size" in e.message and "\n" not in e.message, e.message
    assert refused, "at least the config with every size at its limit is refused"


@pytest.mark.parametrize(("fam", "model_type"), TINY, ids=[mt for _, mt in TINY])
def test_truncated_models_give_the_same_maps_and_still_check_the_whole_checkpoint(fam, model_type, tmp_path):
    """extract and bench build and load only the layers up to the last selected stage."""
    import numpy as np
    from transformers import CONFIG_MAPPING

    from bbx.extractor import Extractor
    from tests.util import tiny_checkpoint

    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"{model_type}: not a transformers model type (its own tests cover its checkpoints)")
    folder = tiny_checkpoint(tmp_path / "ckpt", model_type, seed=1)
    whole = Extractor(str(folder), out_indices=[1, -1])
    early = Extractor(str(folder), out_indices=[1])
    from tests.util import photo

    batch = np.stack([early.load(photo(300, 200, seed=i)) for i in range(2)])
    assert torch.equal(early(batch)[early.stages[0]], whole(batch)[early.stages[0]])
    model = early.model
    if model.stage_modules is not None:
        kept = len(getattr(model, model.stage_modules))
        assert kept == max(0, 1 - model.stage_module_offset + 1) < len(getattr(whole.model, model.stage_modules))
        with pytest.raises(ValueError, match="truncated"):
            model.select(out_indices=[-1])
    # strictness covers the dropped layers: a key they need, missing from the checkpoint, is named
    full = _tiny_model(fam, model_type)
    state = dict(full.state_dict())
    part = _tiny_model(fam, model_type)
    part.truncate(1)
    dropped = [k for k in state if k not in part.state_dict() and k not in full.optional_keys]
    dropped = [k for k in dropped if not k.endswith("num_batches_tracked")]
    if dropped:
        with pytest.raises(ModelError, match=dropped[-1].replace(".", r"\.")):
            weights.load_strict(part, {k: v for k, v in state.items() if k != dropped[-1]}, source="t", expected=state)
    weights.load_strict(part, state, source="t", expected=full.state_dict(keep_vars=True))
