"""searchprune._torch: the one copy of eval_mode, model_device and count_params."""

from __future__ import annotations

import inspect

import pytest
import torch
from _toys import MaskParam
from torch import nn
from torch.nn.utils import parametrize

from searchprune._torch import count_params, eval_mode, model_device


def test_eval_mode_restores_each_submodules_own_flag() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model.train()
    model[1].eval()  # a deliberately frozen BatchNorm stays frozen afterwards
    with eval_mode(model) as m:
        assert m is model
        assert not any(sub.training for sub in model.modules())
    assert model.training and model[0].training and not model[1].training


def test_eval_mode_restores_on_error() -> None:
    model = nn.Linear(2, 2).train()
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training


def test_model_device_from_parameters_then_buffers_else_none() -> None:
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")
    bn_stats_only = nn.BatchNorm1d(2, affine=False)
    assert model_device(bn_stats_only) == torch.device("cpu")
    assert model_device(nn.ReLU()) is None


def test_count_params_needs_an_explicit_nonzero() -> None:
    assert inspect.signature(count_params).parameters["nonzero"].default is inspect.Parameter.empty
    with pytest.raises(TypeError):
        count_params(nn.Linear(2, 2))  # type: ignore[call-arg]


def test_count_params_effective_weight_and_shared_once() -> None:
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.fill_(1.0)
    mask = torch.ones(2, 4)
    mask[0, :3] = 0
    parametrize.register_parametrization(lin, "weight", MaskParam(mask))
    model = nn.Sequential(lin, lin)  # shared: counted once
    assert count_params(model, nonzero=False) == 8 + 2
    assert count_params(model, nonzero=True) == 8 - 3 + 2
