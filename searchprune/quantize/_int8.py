"""Export to real int8 CPU kernels with ``torch.ao.quantization`` (FX graph mode).

``torch.ao.quantization`` is deprecated in favour of torchao but still ships with torch and is
the path that produced real speed-ups here (5.4x at batch 128 for a BN CNN, x86 backend; see
``/work/shared/reference/cpu-budget.md``). torchao's ``quantize_`` converts Linear layers only.

The exported scheme is the 8-bit scheme of :func:`quantize_`: weights per-channel symmetric qint8
on the restricted grid [-127, 127] with scale ``max|W| / 127``, activations per-tensor affine quint8
on [0, 255] with min-max ranges (``MinMaxObserver``: the formulas of ``ActFakeQuant``). BatchNorm
is folded into the preceding conv before its weight is quantized; with per-channel scales this
gives the same grid as quantizing the conv weight first. Beyond the fake-quant model, the int8
model also rounds each fused block's *output* (and residual sums) to 8 bits: these are the
input ranges of the next layer in all but name, so predictions agree on almost all inputs.

The int8 model has no autograd: attack the fake-quant model and transfer (cpu-budget.md).

The kernels are chosen by the CPU (:func:`int8_backend`): fbgemm's u8 x s8 products are summed in
16 bits on CPUs without VNNI and saturate at 8-bit activations (measured on an AVX2 EPYC: logits off
by up to 1.56 and 1.6% of predictions changed against the fake-quant model; oneDNN 0.05 and none), so
there the export uses oneDNN, which keeps the sums exact, rather than shrinking the activation grid.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver, QConfig, QConfigMapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..models import Normalize
from ._api import CalibBatch, _own_class_, _parametrizations, dequantize_

__all__ = ["to_int8", "int8_backend", "fold_parametrizations_"]


@contextmanager
def _quiet_torch_ao() -> Iterator[None]:
    """Silences torch.ao's deprecation notices here only (not for the rest of the program)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        warnings.filterwarnings("ignore", message=".*[Dd]eprecat.*")
        yield


def fold_parametrizations_(model: nn.Module) -> nn.Module:
    """Replaces every parametrized tensor (pruning mask, fake quantizer) by its current value."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            _own_class_(module)  # copies of the model share the class this edits
            for name in list(_parametrizations(module).keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


def _float_prefix_modules(model: nn.Module) -> list[str]:
    """Names of input-normalization modules, which stay float: the first conv's quantizer then
    sees the normalized input exactly as the fake-quant model's first ``act_quant`` does."""
    # a user's own model may bring its own class of that name: recognise it by name too
    return [name for name, m in model.named_modules()
            if name and (isinstance(m, Normalize) or type(m).__name__ == "Normalize")]


def _qconfig(reduce_range: bool) -> QConfig:
    act_max = 127 if reduce_range else 255
    return QConfig(
        activation=MinMaxObserver.with_args(dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                                            quant_min=0, quant_max=act_max),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                  quant_min=-127, quant_max=127),
    )


_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
BACKENDS = ("x86", "fbgemm", "onednn")


def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def int8_backend(flags: frozenset[str] | None = None) -> str:
    """The int8 engine whose sums are exact on this CPU: "x86" (fbgemm / oneDNN per op) where the CPU
    has VNNI, else "onednn" (fbgemm's 16-bit sums saturate there). ``flags`` overrides /proc/cpuinfo."""
    flags = _cpu_flags() if flags is None else flags
    if flags & _VNNI_FLAGS or "onednn" not in torch.backends.quantized.supported_engines:
        return "x86"
    return "onednn"


def to_int8(model: nn.Module, calib_loader: Iterable[CalibBatch], *, num_batches: int = 4,
            backend: str | None = None, reduce_range: bool = False) -> nn.Module:
    """A copy of ``model`` running real int8 kernels on the CPU (``torch.ao`` FX graph mode).

    The copy is moved to the CPU; fake quantizers are removed (the observers recompute the same
    8-bit grid) and pruning masks are folded into the weights, so pruned zeros stay zero. Conv,
    BatchNorm and ReLU are fused; the input normalization stays in float. Activation ranges are
    the min / max over ``num_batches`` batches of ``calib_loader``, weights are quantized
    per-channel symmetric. ``torch.backends.quantized.engine`` is set to ``backend`` (the int8
    modules need it at run time).

    Args:
        model: a float or fake-quantized model (any bitwidths: the export is always 8 bit).
        calib_loader: iterable of ``(x in [0, 1], y)`` batches.
        num_batches: calibration batches (use the same as ``QuantConfig.calib_batches`` to get the
            fake-quant model's activation ranges).
        backend: "x86" (fbgemm or oneDNN kernels picked per op), "fbgemm" or "onednn"; None (default):
            :func:`int8_backend`, the one whose sums are exact on this CPU.
        reduce_range: 7-bit activations (PyTorch's remedy for fbgemm's saturation without VNNI); off by
            default, which keeps the grid equal to ``act_bits=8`` (the backend choice avoids saturation).

    Returns:
        An int8 ``torch.fx.GraphModule`` in eval mode that takes and returns float tensors.

    Raises:
        ConfigError: the backend is unknown, the loader is empty, or torch cannot trace or convert
            the model (the message says which step failed and why).
    """
    backend = int8_backend() if backend is None else backend
    if backend not in torch.backends.quantized.supported_engines or backend not in BACKENDS:
        raise ConfigError(f"int8 backend {backend!r} is not available; expected one of {', '.join(BACKENDS)} "
                          f"(this torch supports {torch.backends.quantized.supported_engines})")
    if num_batches < 1:
        raise ConfigError(f"to_int8: expected num_batches >= 1, got {num_batches}")
    with torch.no_grad():
        m = copy.deepcopy(model).cpu().eval()
    dequantize_(m)
    fold_parametrizations_(m)

    batches: list[torch.Tensor] = []
    for batch in calib_loader:
        batches.append((batch[0] if isinstance(batch, tuple | list) else batch).detach().cpu().float())
        if len(batches) >= num_batches:
            break
    if not batches:
        raise ConfigError("to_int8: the calibration loader yielded no batches")

    torch.backends.quantized.engine = backend
    qmap = QConfigMapping().set_global(_qconfig(reduce_range))
    for name in _float_prefix_modules(m):
        qmap = qmap.set_module_name(name, None)

    with _quiet_torch_ao():
        try:
            prepared = prepare_fx(m, qmap, example_inputs=(batches[0][:1],))
        except Exception as e:  # tracing or fusion failed: say which model and why
            raise ConfigError(f"to_int8: {type(model).__name__} cannot be traced for int8 export "
                              f"(torch.fx: {type(e).__name__}: {e})") from e
        with torch.no_grad():
            for x in batches:
                prepared(x)
        try:
            int8 = convert_fx(prepared)
            with torch.no_grad():
                int8(batches[0][:2])
        except Exception as e:
            raise ConfigError(f"to_int8: {type(model).__name__} has an op without an int8 kernel on "
                              f"backend {backend!r} ({type(e).__name__}: {e})") from e
    return int8.eval()
