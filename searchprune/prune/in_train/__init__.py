"""In-train pruning (Vemparala et al., CVPR-W SAIAD 2021): binary masks learned jointly with the
weights under a robust loss plus a hardware-cost penalty.

Method (``shared/seeds/002``; ``shared/reference/methods.md`` C):

* every pruning unit has a continuous mask logit ``M``; the forward pass uses
  ``W * expand(M_b)`` with ``M_b = round(0.5 * tanh(M) + 0.5)``; the backward pass treats ``round``
  as the identity (straight-through), so ``dL/dM = dL/dM_b * 0.5 * (1 - tanh(M)^2)`` (Eq. 5/6);
* units: ``weight`` (M shaped like W), ``kernel`` (``[C_out, C_in]``, broadcast over the kernel) or
  ``channel`` (one mask per output channel; see below);
* masks start at ``M = 1`` (``M_b = 1``, nothing pruned: Alg. 1 line 1) and are weight-decayed with
  the weights (the paper's ``L_reg``): they are ordinary parameters of ``train_``'s optimizer;
* loss = robust loss (FastAT by default, the paper's) ``+ lam * L_HW`` with
  ``L_HW = max(sum_l psi_l / sum_l psi_l^0 - psi*, 0)`` (Eq. 3), ``psi_l`` the layer's MACs (or
  parameters) under the current binary masks (Eq. 4); the penalty acts between the fractions
  ``prune_start`` and ``prune_end`` of training (the paper: epochs 20 and 240 of 300), after which
  the masks are frozen and the weights keep training.

Cost model. ``psi`` sums over *every* conv / linear layer of the model (non-prunable ones are
constant), so ``psi / psi^0`` is exactly ``count_macs / count_dense_macs`` of the pruned model.
Weight / kernel masks: ``psi_l = out_positions_l x kept weights``. Channel masks are one mask per
*coupled channel group* of Torch-Pruning's dependency graph (``structured.channel_groups``: a
conv's filters with its BatchNorm and, in residual networks, every conv writing into the same sum),
so the channels can be removed physically afterwards; the mask multiplies each member's filters,
bias and BatchNorm affine parameters, so a masked channel outputs exactly zero, as if removed. The
cost credits both ends, as the paper's ``mu_l`` and ``mu_{l+1}``:
``psi_l = out_positions x kh x kw x kept_out_l x kept_in_l``, where ``kept_in_l`` counts the input
channels (or, after a flatten, input features) of layer ``l`` that the graph ties to pruned
channels of its producers. That holds for any graph Torch-Pruning traces (sequential, residual,
flatten into a linear layer); grouped / depthwise convs get no input-side credit.

Penalty weight. A fixed ``lam`` (option) is the paper's. By default the weight is adaptive: it
starts at 1/100 of :func:`lam_auto` (the weight at which the penalty alone would carry an average
mask across the boundary by mid-window) and grows geometrically while the cost is above the target
(reaching 100x that at the window's end if it must), so a run of any length reaches the target; a
unit's logit falls only while ``lam x (its cost share)`` beats the robust loss's pull on it, so
given enough steps units go in order of importance per unit of cost (in runs of a few hundred
steps a layer's masks still tend to cross together: see the fit below).

Freezing. The masks freeze at the first step within the target (the paper stops mask training once
``L_HW = 0``), at ``prune_end`` at the latest; the weights then keep training with the final masks.
At that moment the binary masks are fitted to the target: every mask tensor (a layer, or a channel
group) keeps the fraction ``f + delta`` of its units, ``f`` its trained fraction and ``delta`` one
shift for all, the units with the highest logits (ties by weight magnitude) kept within each
tensor, then single units top it up. Kept units go while the cost is above the target
(``enforce_target``); pruned units come back while it stays within (``fill_target``): the hinge
overshoots, and in short runs a whole layer's masks cross together (they share one cost share),
which leaves logits comparable within a layer but not across layers. So the achieved ratio never
exceeds the target and falls short of it by about one unit's cost. Both False gives the paper's raw
binarization.

After training the binary masks become the shared fixed :class:`Mask` (weight, kernel), or the
pruned channels are removed physically through the same dependency groups (channel; every group
keeps at least one channel).

Target units. ``sparsity`` here is ``1 - (fraction of the model's MACs kept)`` (or of its conv /
linear parameters with ``cost="params"``), not the fraction of prunable weights or channels the
other methods remove: ``InTrain.target_unit`` says so, and ``PruneReport.sparsity`` still reports
the achieved weight (or channel) sparsity, with the achieved cost ratio in ``extra["ratio_final"]``.
"""

from .cost import ADAPTIVE_RANGE, HardwareCost, HardwareLoss, lam_auto, steps_per_epoch, total_steps
from .fit import fit_to_target_, unit_magnitudes
from .masks import (
    ChannelMember,
    FreezableMask,
    GroupMask,
    LayerMask,
    MaskedGroup,
    attach_channel_masks_,
    attach_layer_masks_,
    binarize,
    check_only_masks,
    fix_layer_masks_,
    remove_channels_,
)
from .method import InTrain

__all__ = ["binarize", "FreezableMask", "LayerMask", "GroupMask", "ChannelMember", "MaskedGroup", "check_only_masks",
           "HardwareCost", "HardwareLoss", "ADAPTIVE_RANGE", "lam_auto", "steps_per_epoch", "total_steps",
           "attach_layer_masks_", "attach_channel_masks_", "fix_layer_masks_", "remove_channels_",
           "fit_to_target_", "unit_magnitudes", "InTrain"]
