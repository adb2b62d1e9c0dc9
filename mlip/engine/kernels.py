"""Faster, numerically equivalent replacements for MACE's edge convolution, checked before use.

MACE's interaction blocks compute, per edge, e3nn's ``TensorProduct`` of the sender's features
with the edge's spherical harmonics (per-edge weights, ``uvu`` paths), then sum the messages on
the receivers. On CPUs that product dominates a step (about half the forward of a 32x0e model,
two thirds of a 64x0e+64x1o one): e3nn evaluates each path with its own einsums and copies.
Every MACE interaction block accepts a fused convolution instead (``conv_fusion``: the block then
calls ``conv_tp(node_feats, edge_attrs, tp_weights, edge_index)`` and gets the summed message),
the hook mace-torch uses for cuEquivariance. :class:`FusedEdgeConvolution` implements that call:
paths that share an input irrep are evaluated together (the spherical harmonics are contracted
with the Wigner 3j symbols in one matrix product, then one batched product with the features),
each path's per-edge weights multiply its slice directly (no gathers: their backward is a scatter,
which cost about a fifth of a CPU step), and messages are summed with ``index_add``.

:func:`accelerate` swaps it into a copy of a model only where it reproduces the e3nn product on
random inputs (float64, relative error below 1e-10); anything else keeps mace-torch's code.
:func:`tabulate_radial` (float32 only) replaces the per-edge radial MLPs by checked lookup tables.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

CHECK_TOLERANCE = 1e-10


class FusedEdgeConvolution(torch.nn.Module):
    """Σ over incoming edges of TP(sender features, edge harmonics; per-edge weights), e3nn layout."""

    def __init__(self, tp):
        super().__init__()
        ins1, ins2, out = tp.irreps_in1, tp.irreps_in2, tp.irreps_out
        if any(mul_ir.mul != 1 for mul_ir in ins2):
            raise ValueError("edge attributes must have multiplicity 1 per irrep")
        if tp.internal_weights or tp.shared_weights:
            raise ValueError("only per-edge (external, unshared) weights are supported")
        self.dim_in1 = ins1.dim
        self.dim_out = out.dim
        slices2 = ins2.slices()
        self.weight_numel = tp.weight_numel
        groups: dict[int, list] = {}
        self._weight_split = []  # per instruction, its columns of the per-edge weights (in order)
        for w_index, ins in enumerate(tp.instructions):
            if ins.connection_mode != "uvu" or not ins.has_weight:
                raise ValueError(f"unsupported instruction {ins}")
            groups.setdefault(ins.i_in1, []).append((ins, w_index))
            self._weight_split.append(ins1[ins.i_in1].mul)
        if sum(self._weight_split) != tp.weight_numel:
            raise ValueError("weight layout not understood")
        self._in1_split = [mul_ir.dim for mul_ir in ins1]
        # per group (input irrep): its slice of the node features, the coupling of the edge harmonics
        # with the 3j symbols for all its paths at once, and per path (output irrep, columns, weights)
        self._groups = []
        block_of_output: dict[int, tuple[int, int]] = {}  # i_out -> (group, path)
        for g_index, (i1, members) in enumerate(sorted(groups.items())):
            mul, d1 = ins1[i1].mul, ins1[i1].ir.dim
            k_total = sum(out[ins.i_out].ir.dim for ins, _ in members)
            coupling = torch.zeros(ins2.dim, d1, k_total, dtype=torch.float64)
            paths = []
            k = 0
            for ins, w_index in members:
                l1, l2, l3 = ins1[ins.i_in1].ir.l, ins2[ins.i_in2].ir.l, out[ins.i_out].ir.l
                d3 = 2 * l3 + 1
                w3j = _wigner_3j(tp, l1, l2, l3)  # (d1, d2, d3)
                s2 = slices2[ins.i_in2]
                coupling[s2.start:s2.stop, :, k:k + d3] = ins.path_weight * w3j.permute(1, 0, 2)
                if ins.i_out in block_of_output:
                    raise ValueError("each output irrep must come from exactly one path")
                block_of_output[ins.i_out] = (g_index, len(paths))
                paths.append((d3, w_index))
                k += d3
            self.register_buffer(f"coupling_{g_index}", coupling.reshape(ins2.dim, d1 * k_total))
            self._groups.append((i1, mul, d1, k_total, paths, [d3 for d3, _ in paths]))
        if sorted(block_of_output) != list(range(len(out))):
            raise ValueError("output layout not covered")
        self._output_order = [block_of_output[i_out] for i_out in range(len(out))]

    def forward(self, node_feats, edge_attrs, tp_weights, edge_index):
        sender, receiver = edge_index[0], edge_index[1]
        x1 = node_feats.index_select(0, sender)
        n_edges = x1.shape[0]
        # split, not sliced: the backward of a split is one concatenation, that of each slice a zero-filled copy
        x_parts = x1.split(self._in1_split, dim=1)
        w_parts = tp_weights.split(self._weight_split, dim=1)
        blocks = []  # per group, per path: (E, mul * d3) in e3nn's mul-major layout
        for g_index, (i1, mul, d1, k_total, paths, k_split) in enumerate(self._groups):
            coupling = getattr(self, f"coupling_{g_index}").to(edge_attrs.dtype)
            yc = (edge_attrs @ coupling).view(n_edges, d1, k_total)
            x = x_parts[i1]
            group_blocks = []
            if d1 == 1:  # scalars in: weight the features first (E × mul), then one outer product per path
                for (d3, w_index), y in zip(paths, yc.split(k_split, dim=2)):
                    xw = x * w_parts[w_index]
                    group_blocks.append((xw.unsqueeze(2) * y).reshape(n_edges, mul * d3))
            else:
                prod = torch.bmm(x.reshape(n_edges, mul, d1), yc)  # (E, mul, K)
                for (d3, w_index), p in zip(paths, prod.split(k_split, dim=2)):
                    group_blocks.append((p * w_parts[w_index].unsqueeze(2)).reshape(n_edges, mul * d3))
            blocks.append(group_blocks)
        ordered = [blocks[g][p] for g, p in self._output_order]
        edge_out = torch.cat(ordered, dim=1) if len(ordered) > 1 else ordered[0]
        message = torch.zeros((node_feats.shape[0], self.dim_out), dtype=edge_out.dtype, device=edge_out.device)
        return message.index_add(0, receiver, edge_out)


def _wigner_3j(tp, l1: int, l2: int, l3: int) -> torch.Tensor:
    """The 3j symbol e3nn's generated code uses (its stored constant when it has one), as float64."""
    from e3nn import o3

    buffers = dict(tp.named_buffers())
    stored = buffers.get(f"_compiled_main_left_right._w3j_{l1}_{l2}_{l3}")
    if stored is not None:
        return stored.detach().to(torch.float64).reshape(2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1)
    return o3.wigner_3j(l1, l2, l3, dtype=torch.float64)


def _reference_message(tp, node_feats, edge_attrs, tp_weights, edge_index):
    from mace.tools.scatter import scatter_sum

    mji = tp(node_feats[edge_index[0]], edge_attrs, tp_weights)
    return scatter_sum(src=mji, index=edge_index[1], dim=0, dim_size=node_feats.shape[0])


def _check(block, fused: FusedEdgeConvolution) -> float:
    """Largest relative difference between the fused and e3nn messages and input gradients (float64)."""
    import copy

    gen = torch.Generator().manual_seed(0)
    tp = copy.deepcopy(block.conv_tp).to(torch.float64)
    n_nodes, n_edges = 7, 40
    dtype = torch.float64
    node_feats = torch.randn(n_nodes, tp.irreps_in1.dim, generator=gen, dtype=dtype)
    edge_attrs = torch.randn(n_edges, tp.irreps_in2.dim, generator=gen, dtype=dtype)
    weights = torch.randn(n_edges, tp.weight_numel, generator=gen, dtype=dtype)
    edge_index = torch.randint(0, n_nodes, (2, n_edges), generator=gen)
    probe = torch.randn(n_nodes, tp.irreps_out.dim, generator=gen, dtype=dtype)
    results = []
    fused64 = copy.deepcopy(fused).to(dtype)
    for fn in (lambda *a: _reference_message(tp, *a), fused64):
        inputs = [t.clone().requires_grad_(True) for t in (node_feats, edge_attrs, weights)]
        out = fn(inputs[0], inputs[1], inputs[2], edge_index)
        grads = torch.autograd.grad((out * probe).sum(), inputs)
        results.append([out.detach(), *grads])
    worst = 0.0
    for ref, new in zip(*results):
        scale = ref.abs().max().clamp_min(1e-300)
        worst = max(worst, float((ref - new).abs().max() / scale))
    return worst


def accelerate(module) -> list[str]:
    """Swap fused convolutions into ``module`` (in place) where they match e3nn; names of the swapped blocks.

    Call on the engine's private copy of a model, before moving it to its device and dtype.
    """
    swapped = []
    for index, block in enumerate(getattr(module, "interactions", [])):
        if hasattr(block, "conv_fusion") or not hasattr(block, "conv_tp"):
            continue  # already fused (cuEquivariance / OpenEquivariance) or not a MACE convolution
        try:
            fused = FusedEdgeConvolution(block.conv_tp)
        except (ValueError, AttributeError) as err:
            log.info("interaction %d (%s) keeps e3nn's convolution: %s", index, type(block).__name__, err)
            continue
        dtype = next(block.parameters()).dtype
        error = _check(block, fused)
        if error > CHECK_TOLERANCE:
            log.warning("interaction %d (%s): fused convolution differs from e3nn by %.1e; keeping e3nn's",
                        index, type(block).__name__, error)
            continue
        block.conv_tp = fused.to(dtype)
        block.conv_fusion = "ionscreen"
        swapped.append(f"interactions.{index}")
    return swapped


# -- tabulated radial functions ------------------------------------------------------------------------
#
# In the usual MACE interaction blocks the per-edge weights of the convolution depend on the edge length
# alone: an MLP (e3nn's FullyConnectedNet, three hidden layers of 64) of the Bessel features times the
# polynomial cutoff. Evaluating that MLP and its backward on every edge is about a fifth of a CPU step of
# a small model. The function is smooth in one variable on [0, r_max], so it can be tabulated: a piecewise
# cubic Hermite interpolant from the exact values and derivatives at evenly spaced knots (error ~ h⁴ f⁗/384,
# its derivative's ~ h³: 7e-8 of the largest with 2,048 knots on r_max = 5 Å; a model with steeper radial
# functions gets 4,096 or 8,192, each doubling cutting the derivative's error eightfold), evaluated with one gather and a
# Horner step per edge, its derivative alongside for the forces.

RADIAL_KNOTS = 2048
RADIAL_REFINEMENTS = 2  # a table off by more than the tolerance is rebuilt with twice the knots, this many times
RADIAL_TOLERANCE = 1e-7  # relative to the largest weight (and derivative) over the range; float32 resolves ~1e-7
RADIAL_HEAD_RATIO = 2.0  # tabulate the last hidden layer instead when the weights are this many times wider
_RADIAL_BLOCKS = ("RealAgnosticInteractionBlock", "RealAgnosticResidualInteractionBlock")  # edge_feats → conv_tp_weights only


class _HermiteLookup(torch.autograd.Function):
    """f(r) from a table of cubic coefficients per interval; saves df/dr for the backward (first order only)."""

    @staticmethod
    def forward(ctx, r, table, inv_h):
        x = r.squeeze(-1) * inv_h
        k = x.floor().clamp_(0, table.shape[0] - 1)
        t = (x - k).unsqueeze(-1)
        c = table.index_select(0, k.to(torch.long))  # (E, 4, W)
        a0, a1, a2, a3 = c.unbind(1)
        value = a0 + t * (a1 + t * (a2 + t * a3))
        ctx.save_for_backward((a1 + t * (2.0 * a2 + 3.0 * t * a3)) * inv_h)
        return value

    @staticmethod
    def backward(ctx, grad_value):
        (slope,) = ctx.saved_tensors
        return (grad_value * slope).sum(-1, keepdim=True), None, None


class TabulatedRadial(torch.nn.Module):
    """Drop-in for an interaction block's ``conv_tp_weights`` that takes the edge length (E, 1) instead of
    the radial features and returns the block's convolution weights, cutoff included.

    ``exact`` maps r to what is tabulated: the weights themselves, or, with ``head`` (the MLP's last, linear
    layer, kept as it is), the last hidden layer, when the weights are much wider than it (an L=1 model has
    448 weights per edge and 64 hidden units: gathering 64 columns and one matrix product beats gathering 448).
    """

    def __init__(self, exact, r_max: float, n_knots: int = RADIAL_KNOTS, head: torch.nn.Module | None = None):
        super().__init__()
        self.head = head
        h = r_max / n_knots
        r = torch.arange(n_knots + 1, dtype=torch.float64).mul_(h).clamp_(min=1e-3 * h).unsqueeze(-1)
        values, slopes = torch.func.jvp(exact, (r,), (torch.ones_like(r),))  # every column's df/dr in one pass
        y, m = values.detach(), slopes.detach() * h
        y0, y1, m0, m1 = y[:-1], y[1:], m[:-1], m[1:]
        table = torch.stack([y0, m0, 3.0 * (y1 - y0) - 2.0 * m0 - m1, 2.0 * (y0 - y1) + m0 + m1], dim=1)
        self.register_buffer("table", table)  # (n_knots, 4, W)
        self.inv_h = 1.0 / h

    def forward(self, lengths):
        values = _HermiteLookup.apply(lengths, self.table.to(lengths.dtype), self.inv_h)
        return self.head(values) if self.head is not None else values


class LengthsAsRadialFeatures(torch.nn.Module):
    """Replaces a model's ``radial_embedding`` once every block tabulates its radial function: the blocks
    get the edge lengths, and no separate cutoff (it is inside their tables)."""

    def __init__(self, original):
        super().__init__()
        self.original = original
        self.out_dim = 1

    def forward(self, edge_lengths, node_attrs, edge_index, atomic_numbers):
        return edge_lengths, None


def _exact_radial(embedding, mlp):
    """r (E, 1) → what the block gets as tp_weights (MLP of the radial features, times the cutoff if separate)."""

    def f(r):
        feats, cutoff = embedding(r, None, None, None)
        weights = mlp(feats)
        return weights * cutoff if cutoff is not None else weights

    return f


def _split_last_layer(mlp):
    """(hidden layers as one callable, last layer) of an e3nn FullyConnectedNet whose last layer is linear and
    at least twice as wide as the hidden one (the cutoff commutes with it); else None."""
    if type(mlp).__name__ != "FullyConnectedNet" or len(getattr(mlp, "hs", [])) < 3:
        return None
    layers = list(mlp.children())
    if len(layers) != len(mlp.hs) - 1 or getattr(layers[-1], "act", 0) is not None or mlp.hs[-1] < RADIAL_HEAD_RATIO * mlp.hs[-2]:
        return None
    return torch.nn.Sequential(*layers[:-1]), layers[-1]


def _table_error(exact, table, probe, gen) -> float:
    """Largest error of ``table`` against ``exact`` at the ``probe`` lengths, of the values and of their
    derivative (random projection), each relative to the largest exact one."""
    r1, r2 = probe.clone().requires_grad_(True), probe.clone().requires_grad_(True)
    want, got = exact(r1), table(r2)
    weights = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    g_want = torch.autograd.grad((want * weights).sum(), r1)[0]
    g_got = torch.autograd.grad((got * weights).sum(), r2)[0]
    want, got = want.detach(), got.detach()
    return max(float((want - got).abs().max() / want.abs().max().clamp_min(1e-300)),
               float((g_want - g_got).abs().max() / g_want.abs().max().clamp_min(1e-300)))


def tabulate_radial(module, n_knots: int | None = None) -> list[str]:
    """Swap tabulated radial functions into ``module`` (in place) when every interaction block qualifies and
    each table reproduces its exact function and derivative to ``RADIAL_TOLERANCE`` (with ``n_knots``, or up to
    ``RADIAL_REFINEMENTS`` doublings of it); names of the swapped blocks (empty: nothing changed). For float32
    evaluation; float64 keeps the exact functions."""
    import copy

    n_knots = n_knots or RADIAL_KNOTS
    blocks = list(getattr(module, "interactions", []))
    embedding = getattr(module, "radial_embedding", None)
    if not blocks or embedding is None or isinstance(embedding, LengthsAsRadialFeatures):
        return []
    if hasattr(embedding, "distance_transform"):
        log.info("radial functions stay exact: the distance transform depends on the species")
        return []
    if any(type(block).__name__ not in _RADIAL_BLOCKS for block in blocks):
        log.info("radial functions stay exact: %s", ", ".join(sorted({type(b).__name__ for b in blocks})))
        return []
    r_max = float(module.r_max)
    embedding64 = copy.deepcopy(embedding).to(torch.float64)
    tables = []
    gen = torch.Generator().manual_seed(0)
    probe = (0.3 + (r_max - 0.3) * torch.rand(4000, 1, generator=gen, dtype=torch.float64))
    for index, block in enumerate(blocks):
        mlp64 = copy.deepcopy(block.conv_tp_weights).to(torch.float64)
        exact = _exact_radial(embedding64, mlp64)
        split = _split_last_layer(mlp64)
        for knots in (n_knots << k for k in range(RADIAL_REFINEMENTS + 1)):
            table = (TabulatedRadial(_exact_radial(embedding64, split[0]), r_max, knots, head=split[1])
                     if split is not None else TabulatedRadial(exact, r_max, knots))
            err = _table_error(exact, table, probe, gen)
            if err <= RADIAL_TOLERANCE:
                break
        else:
            log.warning("interaction %d: tabulated radial function differs by %.1e even with %d knots; keeping the "
                        "exact ones", index, err, knots)
            return []
        tables.append(table)
    for block, table in zip(blocks, tables):  # float64 here; the caller moves the module to its dtype
        block.conv_tp_weights = table
    module.radial_embedding = LengthsAsRadialFeatures(embedding)
    return [f"interactions.{k}.radial_table" for k in range(len(blocks))]
