"""``PruningMethod.check``: the model-free validation that ``prune_`` runs first and a study runs at
creation for every method x granularity x allocation. Parametrized over ``list_methods()``."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn
from torch.nn.utils import parametrize

from searchprune.config import PruneConfig
from searchprune.errors import ConfigError
from searchprune.prune import (
    GRANULARITIES,
    PruningMethod,
    check_config,
    get_allocation,
    get_method,
    list_allocations,
    list_methods,
    prune_,
    register_method,
)
from searchprune.prune.method import METHODS
from searchprune.prune.structured import STRUCTURED_OPTION_CHECKS, STRUCTURED_OPTIONS

BAD = -1.5  # outside the range of every option of this package (no option takes a negative number)


def _cfg(method: str, granularity: str, allocation: str, **kw: Any) -> PruneConfig:
    if allocation == "per_layer":
        return PruneConfig(method=method, granularity=granularity, allocation=allocation, sparsity=None,
                           layer_sparsity={"fc": 0.5}, **kw)
    return PruneConfig(method=method, granularity=granularity, allocation=allocation, **kw)


def _first(method: str, **kw: Any) -> PruneConfig:
    cls = get_method(method)
    return _cfg(method, cls.granularities[0], cls.allocations[0], **kw)


def _error(cfg: PruneConfig) -> str:
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


COMBOS = [(m, g, a) for m in list_methods() for g in get_method(m).granularities for a in get_method(m).allocations]


@pytest.mark.parametrize("combo", COMBOS, ids="-".join)
def test_every_supported_combination_passes_with_defaults(combo: tuple[str, str, str]) -> None:
    check_config(_cfg(*combo))  # no model, no data: returns None, raises nothing


@pytest.mark.parametrize("name", list_methods())
def test_unknown_option_key_is_named(name: str) -> None:
    msg = _error(_first(name, options={"no_such_option": 1}))
    assert "prune.options.no_such_option" in msg and repr(name) in msg
    for key in get_method(name).default_options:  # and what was expected
        assert key in msg


@pytest.mark.parametrize("name", list_methods())
def test_every_option_has_a_range_check(name: str) -> None:
    cls = get_method(name)
    assert set(cls.option_checks) == set(cls.default_options), "every option needs a check"
    for key, default in cls.default_options.items():
        assert cls.option_checks[key](default) is None, f"{key}: its default fails its own check"


@pytest.mark.parametrize("case", [(m, k) for m in list_methods() for k in get_method(m).default_options],
                         ids="-".join)
def test_out_of_range_option_is_named(case: tuple[str, str]) -> None:
    name, key = case
    msg = _error(_first(name, options={key: BAD}))
    assert f"prune.options.{key}" in msg and repr(name) in msg and str(BAD) in msg and "expected" in msg


@pytest.mark.parametrize("name", list_methods())
def test_unsupported_granularity_and_allocation_are_named(name: str) -> None:
    cls = get_method(name)
    for gran in set(GRANULARITIES) - set(cls.granularities):
        msg = _error(_cfg(name, gran, cls.allocations[0]))
        assert msg.startswith("prune.granularity") and repr(gran) in msg and repr(name) in msg
        assert all(g in msg for g in cls.granularities)
    for alloc in set(list_allocations()) - set(cls.allocations):
        msg = _error(_cfg(name, cls.granularities[0], alloc))
        assert msg.startswith("prune.allocation") and repr(alloc) in msg and repr(name) in msg
        assert all(a in msg for a in cls.allocations)


def test_unknown_method_lists_the_registry() -> None:
    msg = _error(PruneConfig(method="nope"))
    assert "nope" in msg and all(m in msg for m in list_methods())


def test_allocation_options_are_checked_and_accepted() -> None:
    cfg = PruneConfig(method="magnitude", allocation="mrs", sparsity=0.5, options={"r_max": 0.9, "passes": 2})
    check_config(cfg)
    msg = _error(PruneConfig(method="magnitude", allocation="mrs", options={"r_max": 1.5}))
    assert "prune.options.r_max" in msg and "'mrs'" in msg and "1.5" in msg
    msg = _error(PruneConfig(method="magnitude", allocation="mrs", sparsity=0.97, options={"r_max": 0.95}))
    assert "prune.sparsity" in msg and "0.97" in msg
    check_config(PruneConfig(method="magnitude", allocation="mrs", sparsity=0.5, options={"mrs_map": "linear"}))
    msg = _error(PruneConfig(method="magnitude", allocation="mrs", options={"mrs_map": "log"}))
    assert "prune.options.mrs_map" in msg and "'log'" in msg and "inverse, linear" in msg
    msg = _error(PruneConfig(method="magnitude", options={"r_max": 0.9}))  # not an option without mrs
    assert "prune.options.r_max" in msg and "unknown" in msg


def test_channel_surgery_options() -> None:
    assert set(STRUCTURED_OPTION_CHECKS) == set(STRUCTURED_OPTIONS)
    check_config(PruneConfig(method="magnitude", granularity="channel", options={"round_to": 8}))
    msg = _error(PruneConfig(method="magnitude", granularity="channel", options={"round_to": 0}))
    assert "prune.options.round_to" in msg and "0" in msg
    assert "unknown" in _error(PruneConfig(method="magnitude", options={"round_to": 8}))


def test_cross_option_rules() -> None:
    msg = _error(PruneConfig(method="in_train", allocation="learned",
                             options={"prune_start": 0.8, "prune_end": 0.5}))
    assert "prune_start" in msg and "0.8" in msg
    msg = _error(PruneConfig(method="in_train", allocation="learned", options={"target_params_ratio": 0.3}))
    assert "prune.options.target_params_ratio" in msg and "macs" in msg


def test_channel_compression_needs_a_bisectable_allocation() -> None:
    msg = _error(PruneConfig(method="magnitude", granularity="channel", allocation="mrs", sparsity=None,
                             compression=2.0))
    assert msg.startswith("prune.compression") and "'mrs'" in msg


def test_prune_runs_the_same_check_before_touching_the_model() -> None:
    model = nn.Linear(4, 2)
    cfg = PruneConfig(method="gap", options={"variant": "nope"})
    msg = _error(cfg)
    with pytest.raises(ConfigError) as e:  # no loader or threat: check fails first, with the same message
        prune_(model, cfg, input_shape=(4,))
    assert str(e.value) == msg
    assert not parametrize.is_parametrized(model)


def test_register_method_rejects_unknown_allocation() -> None:
    with pytest.raises(ValueError, match="nowhere"):
        @register_method("_test_bad_alloc")
        class Bad(PruningMethod):
            allocations = ("global", "nowhere")
    assert "_test_bad_alloc" not in METHODS.names()


@pytest.mark.parametrize("name", list_allocations())
def test_allocation_declared_by_some_method(name: str) -> None:
    cls = get_allocation(name)
    assert cls.name == name
    assert any(name in get_method(m).allocations for m in list_methods()), f"no method uses {name!r}"
    assert set(cls.option_checks) == set(cls.default_options)
    for key, default in cls.default_options.items():
        assert cls.option_checks[key](default) is None, key
