"""Multi-term memory packer and budget planner (docs/semantics.md, "Multi-term memory patchification").

The packer is checked against the literal reference (pad, one strided Conv3d per
term) and the token budget's counts; the planner against brute force over its
scheme; and, where diffusers is installed, against FramePack's history patch
embedding in diffusers.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from vidmem_ext.packer import MultiTermMemoryPacker, memory_term_kernel, plan_memory_terms
from vidmem_ext.reference import multi_term_memory_pack
from vidmem_ext.token_budget import MemoryTerm, multi_term_memory_patchification

# Tolerances against the float64 reference, relative to the largest reference magnitude: the packer
# sums each token's C*kt*kh*kw products in another order than the convolution does.
RTOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 3e-2}


def term(frames, t=1, s=1, p=1):
    return {"num_latent_frames": frames, "temporal_stride": t, "spatial_stride": s, "patch_size": p}


def reference(packer, history):
    weights = [proj.weight for proj in packer.projections]
    biases = [proj.bias for proj in packer.projections]
    return multi_term_memory_pack(history, packer.terms, weights, biases)


def assert_close_to(actual, expected, dtype):
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    assert actual.shape == expected.shape
    assert actual.dtype == dtype
    err = (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0
    assert err <= RTOL[dtype] * scale, f"max error {err:.3g} > {RTOL[dtype]} * {scale:.3g}"


terms_strategy = st.lists(
    st.builds(
        term,
        st.integers(0, 5),
        st.integers(1, 3),
        st.integers(1, 3),
        st.integers(1, 3),
    ),
    min_size=1,
    max_size=3,
)


# --------------------------------------------------------------------------- packer forward


@given(
    terms=terms_strategy,
    height=st.integers(0, 11),
    width=st.integers(0, 11),
    batch=st.integers(1, 2),
    channels=st.integers(1, 3),
    embed_dim=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_forward_matches_reference_and_token_budget(terms, height, width, batch, channels, embed_dim, seed):
    torch.manual_seed(seed)
    packer = MultiTermMemoryPacker(terms, channels, embed_dim, dtype=torch.float64)
    frames = sum(t["num_latent_frames"] for t in terms)
    history = torch.randn(batch, channels, frames, height, width, dtype=torch.float64)
    tokens, positions = packer(history)
    expected_tokens, expected_positions = reference(packer, history)
    assert_close_to(tokens, expected_tokens, torch.float64)
    assert torch.equal(positions, expected_positions)

    with torch.no_grad():  # inference writes straight into one buffer instead of concatenating
        inference_tokens, _ = packer(history)
    assert_close_to(inference_tokens, expected_tokens, torch.float64)

    budget = multi_term_memory_patchification(terms, height, width)
    assert packer.token_counts(height, width) == budget["tokens_per_term"]
    assert tokens.shape == (batch, budget["total_tokens"], embed_dim)
    assert positions.shape == (budget["total_tokens"], 3) and positions.dtype == torch.float32

    # Per-term counts from real forward passes: each term alone, on its slice of the history,
    # gives the budget's count, and the full output is their concatenation in term order.
    first, pieces = 0, []
    for i, t in enumerate(terms):
        single = MultiTermMemoryPacker([t], channels, embed_dim, dtype=torch.float64)
        single.projections[0].load_state_dict(packer.projections[i].state_dict())
        piece, _ = single(history[:, :, first : first + t["num_latent_frames"]])
        assert piece.shape[1] == budget["tokens_per_term"][i]
        pieces.append(piece)
        first += t["num_latent_frames"]
    assert torch.equal(torch.cat(pieces, 1), tokens)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_against_float64_reference(dtype):
    torch.manual_seed(1)
    terms = [term(5, 4, 2, 2), term(3, 2, 2, 2), term(2, 1, 1, 2)]
    packer = MultiTermMemoryPacker(terms, 4, 8, dtype=torch.float64)
    history = torch.randn(2, 4, 10, 13, 9, dtype=torch.float64)
    expected, _ = reference(packer, history)
    tokens, _ = packer.to(dtype)(history.to(dtype))
    assert_close_to(tokens, expected, dtype)


@pytest.mark.parametrize("grad", [True, False])
def test_without_bias(grad):
    torch.manual_seed(11)
    packer = MultiTermMemoryPacker([term(3, 2, 2, 2), term(2, 1, 1, 1)], 3, 4, bias=False, dtype=torch.float64)
    history = torch.randn(3, 3, 5, 6, 7, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        tokens, _ = packer(history)
    assert all(p.bias is None for p in packer.projections)
    assert_close_to(tokens, reference(packer, history)[0], torch.float64)


def test_autocast_runs_the_products_in_low_precision():
    torch.manual_seed(12)
    packer = MultiTermMemoryPacker([term(4, 2, 2, 2), term(1, 1, 1, 2)], 4, 8)
    history = torch.randn(2, 4, 5, 8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        tokens, _ = packer(history)
    assert_close_to(tokens, reference(packer.double(), history.double())[0], torch.bfloat16)


def test_positions_are_kernel_window_centres():
    # 3 frames at kernel (2, 2, 2) (padded to 4 frames, 4x2 latent), then 1 frame at kernel (1, 1, 1).
    packer = MultiTermMemoryPacker([term(3, 2, 1, 2), term(1)], 1, 1)
    _, positions = packer(torch.randn(1, 1, 4, 3, 2))
    first = [[f, r, 0.5] for f in (0.5, 2.5) for r in (0.5, 2.5)]  # rows 0..1 and 2..3 (row 3 is padding)
    last = [[3.0, r, c] for r in range(3) for c in range(2)]
    assert positions.tolist() == first + last
    assert torch.equal(packer.positions(3, 2), positions)


def test_framepack_480p_counts():
    terms = [term(16, 4, 4, 2), term(2, 2, 2, 2), term(1, 1, 1, 2)]
    packer = MultiTermMemoryPacker(terms, 16, 8)
    tokens, positions = packer(torch.randn(1, 16, 19, 60, 104))
    assert packer.token_counts(60, 104) == [4 * 8 * 13, 15 * 26, 30 * 52]
    assert tokens.shape == (1, 416 + 390 + 1560, 8) and positions.shape == (2366, 3)
    assert [memory_term_kernel(t) for t in packer.terms] == [(4, 8, 8), (2, 4, 4), (1, 2, 2)]


def test_input_not_mutated_and_layout_independent():
    torch.manual_seed(2)
    packer = MultiTermMemoryPacker([term(4, 2, 2, 1), term(2, 1, 1, 2)], 3, 5)
    base = torch.randn(6, 7, 2, 3, 5)  # (T, H, B, C, W) storage
    history = base.permute(2, 3, 0, 1, 4)  # non-contiguous (B, C, T, H, W) view
    before = history.clone()
    tokens, _ = packer(history)
    assert torch.equal(history, before)
    assert torch.equal(tokens, packer(history.contiguous())[0])


def test_hooked_or_wrapped_projections_run_their_own_forward():
    torch.manual_seed(9)
    packer = MultiTermMemoryPacker([term(2, 2, 1, 2), term(1, 1, 1, 1)], 2, 3)
    history = torch.randn(2, 2, 3, 4, 4)
    plain, _ = packer(history)
    handle = packer.projections[0].register_forward_hook(lambda module, args, out: 2 * out)
    hooked, _ = packer(history)
    with torch.no_grad():
        assert torch.equal(packer(history)[0], hooked)
    handle.remove()
    n0 = packer.token_counts(4, 4)[0]
    assert torch.allclose(hooked[:, :n0], 2 * plain[:, :n0], atol=1e-6) and torch.equal(hooked[:, n0:], plain[:, n0:])

    class ScaledConv3d(nn.Conv3d):  # stands in for an adapter that changes the forward
        def forward(self, x):
            return super().forward(x) * 3

    wrapped = ScaledConv3d(2, 3, 1, stride=1)
    wrapped.load_state_dict(packer.projections[1].state_dict())
    packer.projections[1] = wrapped
    with torch.no_grad():
        scaled, _ = packer(history)
    assert torch.allclose(scaled[:, n0:], 3 * plain[:, n0:], atol=1e-6) and torch.equal(scaled[:, :n0], plain[:, :n0])

    padded_conv = nn.Conv3d(2, 3, 1, stride=1, padding=(0, 1, 0))  # a replacement that changes the grid
    packer.projections[1] = padded_conv
    for grad in (True, False):  # its own forward runs: 6 rows instead of 4, which the packer refuses
        with torch.set_grad_enabled(grad), pytest.raises(RuntimeError, match=r"projections\[1\] gave tokens"):
            packer(history)


def test_frozen_packer_composes_with_torch_func_and_outside_tensors():
    """A frozen packer (no parameter requires grad) writes its tokens with out= products, which record no
    graph: forward-mode AD, vmap and a hook that brings a tensor requiring grad take the other path."""
    torch.manual_seed(11)
    packer = MultiTermMemoryPacker([term(2, 2, 2, 1), term(2, 1, 1, 1)], 2, 4, dtype=torch.float64)
    packer.requires_grad_(False)
    history, tangent = torch.randn(2, 1, 2, 4, 5, 6, dtype=torch.float64).unbind(0)

    def tokens_of(h):
        return packer(h)[0]

    def reference_of(h):
        return reference(packer, h)[0]

    tokens, jvp = torch.func.jvp(tokens_of, (history,), (tangent,))
    expected, expected_jvp = torch.func.jvp(reference_of, (history,), (tangent,))
    assert_close_to(tokens, expected, torch.float64)
    assert_close_to(jvp, expected_jvp, torch.float64)
    assert jvp.abs().max() > 0
    compiled = torch.compile(lambda h: torch.func.jvp(tokens_of, (h,), (tangent,))[1], backend="eager")
    assert_close_to(compiled(history), expected_jvp, torch.float64)
    batched = torch.stack([history, tangent])
    assert_close_to(torch.func.vmap(tokens_of)(batched), torch.func.vmap(reference_of)(batched), torch.float64)

    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    packer.projections[0].register_forward_hook(lambda module, args, out: out * scale)
    tokens, _ = packer(history)
    (grad,) = torch.autograd.grad(tokens.sum(), scale)
    n0 = packer.token_counts(5, 6)[0]
    torch.testing.assert_close(grad, expected[:, :n0].sum(), rtol=1e-12, atol=1e-12)


def test_out_of_memory_in_a_wrapped_projection_stays_out_of_memory():
    # A hooked projection runs its own forward; its errors are explained, but an OutOfMemoryError is no
    # wrong projection, and callers that retry on it must see it as it is.
    packer = MultiTermMemoryPacker([term(1)], 2, 4)

    def exhausted(module, args):
        raise torch.OutOfMemoryError("no memory left")

    packer.projections[0].register_forward_pre_hook(exhausted)
    with pytest.raises(torch.OutOfMemoryError, match="^no memory left$"):
        packer(torch.randn(1, 2, 1, 2, 2))


def test_a_projection_of_the_wrong_shape_is_named():
    """A Conv3d whose weight has as many elements as the right one but other channels must not be read as
    the right one (its weight would reshape to (embed_dim, -1) and give wrong tokens)."""
    packer = MultiTermMemoryPacker([term(2, 2, 2, 1), term(1)], 2, 4).requires_grad_(False)
    packer.projections[0] = nn.Conv3d(4, 2, (2, 2, 2), stride=(2, 2, 2), bias=False)
    with pytest.raises(RuntimeError, match=r"projections\[0\] failed on terms\[0\].*in_channels=2 to embed_dim=4"):
        packer(torch.randn(1, 2, 3, 4, 4))


def test_empty_and_zero_frame_terms():
    packer = MultiTermMemoryPacker([], 2, 3)
    tokens, positions = packer(torch.randn(4, 2, 0, 5, 5))
    assert tokens.shape == (4, 0, 3) and positions.shape == (0, 3)
    packer = MultiTermMemoryPacker([term(0, 2, 2, 2), term(2, 1, 1, 1)], 2, 3)
    history = torch.randn(1, 2, 2, 2, 2)
    tokens, positions = packer(history)
    assert packer.token_counts(2, 2) == [0, 8] and tokens.shape == (1, 8, 3)
    assert torch.allclose(tokens, reference(packer, history)[0], atol=1e-6)
    assert positions[:, 0].tolist() == [0.0] * 4 + [1.0] * 4
    assert packer(torch.randn(0, 2, 2, 3, 3))[0].shape == (0, 18, 3)  # empty batch


def test_gradients_match_reference():
    torch.manual_seed(3)
    packer = MultiTermMemoryPacker([term(3, 2, 2, 2), term(2, 1, 1, 2)], 2, 3, dtype=torch.float64)
    history = torch.randn(2, 2, 5, 7, 6, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(2, packer(history)[0].shape[1], 3, dtype=torch.float64)

    def grads(forward):
        packer.zero_grad()
        history.grad = None
        (forward(history) * cotangent).sum().backward()
        return [history.grad.clone()] + [p.grad.clone() for p in packer.parameters()]

    ours = grads(lambda x: packer(x)[0])
    theirs = grads(lambda x: reference(packer, x)[0])
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    small = MultiTermMemoryPacker([term(3, 2, 1, 2), term(1, 1, 1, 1)], 1, 2, dtype=torch.float64)
    x = torch.randn(1, 1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h: small(h)[0], (x,))


@pytest.mark.parametrize("grad", [True, False])
def test_compiles_without_graph_breaks(grad):
    torch.manual_seed(4)
    packer = MultiTermMemoryPacker([term(5, 4, 2, 2), term(2, 1, 1, 2)], 2, 4)
    history = torch.randn(2, 2, 7, 9, 10)
    compiled = torch.compile(packer, fullgraph=True, backend="aot_eager")
    with torch.set_grad_enabled(grad):
        tokens, positions = compiled(history)
        expected_tokens, expected_positions = reference(packer, history)
    assert torch.allclose(tokens, expected_tokens, atol=1e-5) and torch.equal(positions, expected_positions)
    assert tokens.requires_grad == grad


@pytest.mark.slow
def test_compiles_with_inductor():
    torch.manual_seed(4)
    packer = MultiTermMemoryPacker([term(5, 4, 2, 2), term(2, 1, 1, 2)], 2, 4)
    history = torch.randn(2, 2, 7, 9, 10)
    compiled = torch.compile(packer, fullgraph=True)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            tokens, positions = compiled(history)
            expected_tokens, expected_positions = packer(history)
        assert torch.allclose(tokens, expected_tokens, atol=1e-5) and torch.equal(positions, expected_positions)


@pytest.mark.parametrize(
    "shape, words",
    [
        ((1, 4, 6, 8, 8), ["(B, C=4, T=7, H, W)", "(1, 4, 6, 8, 8)"]),  # wrong T
        ((1, 3, 7, 8, 8), ["(B, C=4, T=7, H, W)", "(1, 3, 7, 8, 8)"]),  # wrong channels
        ((4, 7, 8, 8), ["5 dims", "(4, 7, 8, 8)"]),  # wrong dims
    ],
)
def test_bad_history_shape_states_expected_and_actual(shape, words):
    packer = MultiTermMemoryPacker([term(4, 2, 2, 2), term(3)], 4, 8)
    with pytest.raises(ValueError) as info:
        packer(torch.randn(shape))
    for word in words:
        assert word in str(info.value)
    with pytest.raises(TypeError, match="history must be a tensor"):
        packer([[1.0]])


@pytest.mark.parametrize(
    "args, exc, words",
    [
        (([term(2, 0)], 4, 8), ValueError, "terms[0] 'temporal_stride'"),
        (([term(2), "x"], 4, 8), TypeError, "terms[1]"),
        ((term(2), 4, 8), TypeError, "sequence"),
        (([term(2)], 0, 8), ValueError, "in_channels"),
        (([term(2)], 4, True), TypeError, "embed_dim"),
        (([term(2)], 4, 8, {"bias": None}), TypeError, "bias must be a bool"),
        (([term(2)], 4, 8, {"dtype": torch.int64}), TypeError, "dtype must be None or a floating"),
        (([term(2)], 4, 8, {"dtype": "float32"}), TypeError, "dtype must be None or a floating"),
        (([term(2)], 4, 8, {"device": "bogus"}), ValueError, "device must name a torch device"),
        (([term(1, 10**30)], 4, 8), ValueError, "terms[0] needs a Conv3d weight of"),
        (([term(1), term(1, 1, 2**20, 2**20)], 4, 8), ValueError, "terms[1] needs a Conv3d weight of"),
    ],
)
def test_bad_constructor_arguments(args, exc, words):
    *args, kwargs = args if isinstance(args[-1], dict) else (*args, {})
    with pytest.raises(exc) as info:
        MultiTermMemoryPacker(*args, **kwargs)
    assert words in str(info.value)


# --------------------------------------------------------------------------- init_from_patch_embed


@pytest.mark.parametrize("patch", [1, 2, 3])
def test_init_from_patch_embed_is_avg_pool_then_base_embedding(patch):
    torch.manual_seed(5 + patch)
    channels, embed_dim, height, width = 3, 6, 12 * patch, 8 * patch  # divisible by every stride * patch
    terms = [term(8, 4, 4, patch), term(4, 2, 2, patch), term(2, 2, 1, patch), term(3, 1, 2, patch)]
    base = nn.Conv3d(channels, embed_dim, (1, patch, patch), stride=(1, patch, patch), dtype=torch.float64)
    packer = MultiTermMemoryPacker(terms, channels, embed_dim, dtype=torch.float64).init_from_patch_embed(base)
    history = torch.randn(2, channels, 17, height, width, dtype=torch.float64)
    tokens, _ = packer(history)
    first, expected = 0, []
    for t in terms:
        frames = history[:, :, first : first + t["num_latent_frames"]]
        first += t["num_latent_frames"]
        strides = (t["temporal_stride"], t["spatial_stride"], t["spatial_stride"])
        expected.append(base(F.avg_pool3d(frames, strides)).flatten(2).transpose(1, 2))
    assert torch.allclose(tokens, torch.cat(expected, 1), rtol=1e-10, atol=1e-12)


def test_init_from_patch_embed_with_padding_pools_the_padded_term():
    torch.manual_seed(6)
    base = nn.Conv3d(2, 4, (1, 2, 2), stride=(1, 2, 2), dtype=torch.float64)
    packer = MultiTermMemoryPacker([term(3, 2, 2, 2)], 2, 4, bias=True, dtype=torch.float64)
    packer.init_from_patch_embed(base)
    history = torch.randn(1, 2, 3, 7, 5, dtype=torch.float64)
    padded = F.pad(history, (0, 3, 0, 1, 0, 1), mode="replicate")  # to 4 x 8 x 8
    expected = base(F.avg_pool3d(padded, (2, 2, 2))).flatten(2).transpose(1, 2)
    assert torch.allclose(packer(history)[0], expected, rtol=1e-10, atol=1e-12)


def test_init_from_patch_embed_without_bias_zeroes_the_packer_bias():
    base = nn.Conv3d(2, 4, (1, 2, 2), stride=(1, 2, 2), bias=False)
    packer = MultiTermMemoryPacker([term(2, 2, 2, 2)], 2, 4)
    packer.init_from_patch_embed(base)
    assert torch.equal(packer.projections[0].bias, torch.zeros(4))


@pytest.mark.parametrize(
    "conv, packer_kwargs, words",
    [
        (nn.Conv2d(2, 4, 2, stride=2), {}, "nn.Conv3d"),
        (nn.Conv3d(2, 4, (2, 2, 2), stride=(2, 2, 2)), {}, "(1, p, p) kernel"),
        (nn.Conv3d(2, 4, (1, 2, 2), stride=(1, 1, 1)), {}, "stride"),
        (nn.Conv3d(2, 4, (1, 2, 2), stride=(1, 2, 2), padding=1), {}, "padding"),
        (nn.Conv3d(3, 4, (1, 2, 2), stride=(1, 2, 2)), {}, "in_channels=2"),
        (nn.Conv3d(2, 4, (1, 3, 3), stride=(1, 3, 3)), {}, "terms[0] has patch_size 2"),
        (nn.Conv3d(2, 4, (1, 2, 2), stride=(1, 2, 2)), {"bias": False}, "bias"),
    ],
)
def test_init_from_patch_embed_rejects_other_convolutions(conv, packer_kwargs, words):
    packer = MultiTermMemoryPacker([term(2, 2, 2, 2)], 2, 4, **packer_kwargs)
    with pytest.raises((TypeError, ValueError)) as info:
        packer.init_from_patch_embed(conv)
    assert words in str(info.value)


# --------------------------------------------------------------------------- plan_memory_terms


def scheme_cost(counts, latent_h, latent_w, patch):
    """Tokens of an allocation: counts[k] frames at stride 2^k (newest level first)."""
    terms = [term(n, 1 << k, 1 << k, patch) for k, n in enumerate(counts)]
    return multi_term_memory_patchification(terms, latent_h, latent_w)["total_tokens"]


def scheme_allocations(frames, levels, recent):
    """Every allocation in the planner's scheme, newest level first (brute force, small inputs)."""
    for counts in itertools.product(range(frames + 1), repeat=levels):
        if sum(counts) != frames or counts[0] < min(recent, frames):
            continue
        nonempty = [k for k, n in enumerate(counts) if n]
        # whole strides in every term but the oldest (the last nonempty level)
        if all(counts[k] % (1 << k) == 0 for k in nonempty[:-1]):
            yield counts


def plan_counts(plan, levels):
    counts = [0] * levels
    for t in plan:
        counts[t.temporal_stride.bit_length() - 1] += t.num_latent_frames
    return tuple(counts)


def check_plan(plan, frames, latent_h, latent_w, budget, patch, recent, max_stride):
    assert all(isinstance(t, MemoryTerm) for t in plan)
    assert sum(t.num_latent_frames for t in plan) == frames  # covers every frame once
    assert all(t.num_latent_frames > 0 and t.patch_size == patch for t in plan)
    strides = [t.temporal_stride for t in plan]
    assert all(t.spatial_stride == t.temporal_stride for t in plan)
    assert all(s & (s - 1) == 0 and s <= max_stride for s in strides)
    assert strides == sorted(strides, reverse=True) and len(set(strides)) == len(strides)  # coarser going back
    assert all(t.num_latent_frames % t.temporal_stride == 0 for t in plan[1:])  # only the oldest is padded
    if min(recent, frames):
        assert plan[-1].temporal_stride == 1 and plan[-1].num_latent_frames >= min(recent, frames)
    assert multi_term_memory_patchification(plan, latent_h, latent_w)["total_tokens"] <= budget


def test_plan_framepack_480p():
    plan = plan_memory_terms(19, 60, 104, token_budget=3926, patch_size=2, recent_frames=1, max_stride=4)
    assert plan == [MemoryTerm(15, 4, 4, 2), MemoryTerm(2, 2, 2, 2), MemoryTerm(2, 1, 1, 2)]
    assert multi_term_memory_patchification(plan, 60, 104)["total_tokens"] == 3926  # the whole budget


@settings(max_examples=300)  # cheap, and the planner's corner cases are many
@given(
    frames=st.integers(0, 9),
    latent_h=st.integers(1, 12),
    latent_w=st.integers(1, 12),
    patch=st.integers(1, 3),
    recent=st.integers(0, 3),
    log_max_stride=st.integers(0, 3),
    budget=st.integers(0, 400),
)
def test_plan_is_finest_in_its_scheme(frames, latent_h, latent_w, patch, recent, log_max_stride, budget):
    """Brute force: the plan is the lexicographically finest feasible allocation, so none refines it."""
    max_stride, levels = 1 << log_max_stride, log_max_stride + 1
    feasible = [
        c for c in scheme_allocations(frames, levels, recent) if scheme_cost(c, latent_h, latent_w, patch) <= budget
    ]
    if not feasible:
        with pytest.raises(ValueError, match="too small"):
            plan_memory_terms(frames, latent_h, latent_w, budget, patch, recent, max_stride)
        return
    plan = plan_memory_terms(frames, latent_h, latent_w, budget, patch, recent, max_stride)
    check_plan(plan, frames, latent_h, latent_w, budget, patch, recent, max_stride)
    chosen = plan_counts(plan, levels)
    assert chosen == max(feasible)

    def newest_at_or_below(counts):  # frames at each level or finer, cumulative from the newest
        return list(itertools.accumulate(counts))

    for other in feasible:  # no feasible allocation puts some frames finer and none coarser
        finer_or_equal = all(a >= b for a, b in zip(newest_at_or_below(other), newest_at_or_below(chosen)))
        assert not finer_or_equal or other == chosen


@settings(max_examples=200)
@given(
    frames=st.integers(0, 300),
    latent_h=st.integers(1, 120),
    latent_w=st.integers(1, 200),
    patch=st.integers(1, 4),
    recent=st.integers(0, 6),
    log_max_stride=st.integers(0, 5),
    budget=st.integers(0, 40000),
)
def test_plan_properties_at_scale(frames, latent_h, latent_w, patch, recent, log_max_stride, budget):
    max_stride = 1 << log_max_stride
    cheapest = scheme_cost(
        [min(recent, frames)] + [0] * (log_max_stride - 1) + [frames - min(recent, frames)]
        if log_max_stride
        else [frames],
        latent_h,
        latent_w,
        patch,
    )
    if cheapest > budget:
        with pytest.raises(ValueError, match=f"needs at least {cheapest} tokens"):
            plan_memory_terms(frames, latent_h, latent_w, budget, patch, recent, max_stride)
        return
    plan = plan_memory_terms(frames, latent_h, latent_w, budget, patch, recent, max_stride)
    check_plan(plan, frames, latent_h, latent_w, budget, patch, recent, max_stride)
    # The plan is the finest feasible one, so moving the newest block of any term one level finer
    # (a whole stride of the coarser level, or all of a shorter oldest term) must exceed the budget.
    counts = list(plan_counts(plan, log_max_stride + 1))
    for k in range(1, len(counts)):
        moved = min(counts[k], 1 << k)
        if moved:
            refined = counts.copy()
            refined[k - 1] += moved
            refined[k] -= moved
            assert scheme_cost(refined, latent_h, latent_w, patch) > budget


def test_plan_impossible_budget_names_the_minimum():
    # 1 frame at stride 1 (30*52 tokens) and 99 at stride 4 (25 * 8*13 tokens): 4160.
    with pytest.raises(ValueError, match="needs at least 4160 tokens"):
        plan_memory_terms(100, 60, 104, token_budget=4159)
    plan = plan_memory_terms(100, 60, 104, token_budget=4160)
    assert plan == [MemoryTerm(99, 4, 4, 2), MemoryTerm(1, 1, 1, 2)]
    assert plan_memory_terms(100, 60, 104, token_budget=4159, max_stride=8)  # coarser levels make it fit


def test_plan_edge_cases():
    assert plan_memory_terms(0, 60, 104, token_budget=0) == []
    assert plan_memory_terms(3, 60, 104, token_budget=10**6) == [MemoryTerm(3, 1, 1, 2)]
    assert plan_memory_terms(2, 4, 4, token_budget=8, recent_frames=5) == [MemoryTerm(2, 1, 1, 2)]  # all recent
    assert plan_memory_terms(8, 4, 4, token_budget=1, recent_frames=0, max_stride=8) == [MemoryTerm(8, 8, 8, 2)]
    assert plan_memory_terms(5, 0, 7, token_budget=0) == [MemoryTerm(5, 1, 1, 2)]  # empty latent: no tokens


def test_plan_with_a_huge_max_stride_stops_at_the_level_that_covers_everything():
    # levels coarser than the history and the latent all cost one token per term: the plan ends at the
    # first of them, so max_stride = 2**80000 costs what max_stride = 64 does (no list of 80000 levels)
    assert plan_memory_terms(1, 4, 4, 10, max_stride=2**80000) == [MemoryTerm(1, 1, 1, 2)]
    huge = plan_memory_terms(40, 16, 16, 130, recent_frames=2, max_stride=2**80000)
    assert huge == plan_memory_terms(40, 16, 16, 130, recent_frames=2, max_stride=64)
    assert [t.temporal_stride for t in huge] == [32, 8, 1]
    with pytest.raises(ValueError, match=r"needs at least \d+ tokens .* at max_stride 2\*\*80000,"):
        plan_memory_terms(40, 16, 16, 1, recent_frames=2, max_stride=2**80000)
    with pytest.raises(ValueError, match=r"history_frames must be >= 0, got -about 2\*\*80001"):
        plan_memory_terms(-3 * 2**80000, 16, 16, 1)


def test_positions_of_an_impossible_latent_name_it():
    from vidmem_ext.packer import memory_token_positions

    with pytest.raises(ValueError, match="latent_h x latent_w"):
        memory_token_positions([term(2)], 10**30, 1)
    with pytest.raises(ValueError, match="latent_h x latent_w"):
        memory_token_positions([term(2, 1, 1, 4)], 2**63, 4)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"history_frames": -1}, ValueError, "history_frames"),
        ({"history_frames": 2.0}, TypeError, "history_frames"),
        ({"latent_h": -3}, ValueError, "latent_h"),
        ({"token_budget": -1}, ValueError, "token_budget"),
        ({"token_budget": 1e4}, TypeError, "token_budget"),
        ({"patch_size": 0}, ValueError, "patch_size"),
        ({"recent_frames": -1}, ValueError, "recent_frames"),
        ({"max_stride": 6}, ValueError, "power of two"),
        ({"max_stride": 0}, ValueError, "max_stride"),
    ],
)
def test_plan_bad_arguments(kwargs, exc, words):
    args = {"history_frames": 19, "latent_h": 60, "latent_w": 104, "token_budget": 4000, **kwargs}
    with pytest.raises(exc, match=words):
        plan_memory_terms(**args)


def test_plan_feeds_the_packer():
    plan = plan_memory_terms(11, 12, 20, token_budget=200, patch_size=2, recent_frames=2, max_stride=4)
    packer = MultiTermMemoryPacker(plan, 3, 4)
    tokens, _ = packer(torch.randn(1, 3, 11, 12, 20))
    assert tokens.shape[1] == multi_term_memory_patchification(plan, 12, 20)["total_tokens"] <= 200


# --------------------------------------------------------------------------- diffusers (FramePack)


def framepack_history_embed(embed_dim):
    """diffusers' FramePack history patch embedding, as its HunyuanVideo FramePack transformer builds it."""
    pytest.importorskip("diffusers")  # an optional extra: skip cleanly without it
    try:
        from diffusers.models.transformers import transformer_hunyuan_video_framepack as framepack
    except ImportError as exc:  # a diffusers from before its FramePack transformer
        pytest.skip(f"this diffusers has no HunyuanVideo FramePack transformer: {exc}")
    heads, head_dim = 2, embed_dim // 2
    model = framepack.HunyuanVideoFramepackTransformer3DModel(
        in_channels=16,
        out_channels=16,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 2, head_dim - 4),
        guidance_embeds=False,
        has_clean_x_embedder=True,
    )
    embed = model.clean_x_embedder
    assert isinstance(embed, framepack.HunyuanVideoHistoryPatchEmbed)
    assert [tuple(c.kernel_size) for c in (embed.proj, embed.proj_2x, embed.proj_4x)] == [
        (1, 2, 2),
        (2, 4, 4),
        (4, 8, 8),
    ]
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in embed.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return embed


def framepack_packer(embed, frames_4x, frames_2x, frames_1x, dtype):
    """The equivalent packer: oldest first, as FramePack concatenates its tokens (4x, 2x, then 1x)."""
    terms = [term(frames_4x, 4, 4, 2), term(frames_2x, 2, 2, 2), term(frames_1x, 1, 1, 2)]
    packer = MultiTermMemoryPacker(terms, 16, embed.proj.out_channels, dtype=dtype)
    for proj, theirs in zip(packer.projections, (embed.proj_4x, embed.proj_2x, embed.proj)):
        proj.load_state_dict(theirs.state_dict())
    return packer


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_diffusers_framepack_history_embedding(dtype):
    """Identical tokens (up to the order of the float sums) on a history that needs padding.

    diffusers pads the 2x and 4x histories at the end with replicate, as the packer does; its
    1x term is not padded, so the latent is even-sized here (see the next test for odd sizes).
    """
    embed = framepack_history_embed(32).to(dtype)
    packer = framepack_packer(embed, 5, 3, 2, dtype)  # 5 -> 8 and 3 -> 4 frames of padding
    history = torch.randn(2, 16, 10, 22, 18, dtype=dtype, generator=torch.Generator().manual_seed(8))
    old, middle, recent = history.split([5, 3, 2], dim=2)  # 22, 18: padded to 24 (2x) and 24 (4x)
    with torch.no_grad():
        clean, clean_2x, clean_4x = embed(recent, middle, old)
        tokens, _ = packer(history)
    expected = torch.cat([clean_4x, clean_2x, clean], dim=1)
    assert clean_4x.shape[1] == 2 * 3 * 3 and clean_2x.shape[1] == 2 * 6 * 5
    assert_close_to(tokens, expected, dtype)


def test_diffusers_drops_the_odd_edge_of_its_1x_term():
    """On an odd latent, diffusers' unpadded 1x convolution floors (drops the last row and column);
    the packer pads and keeps them. Every token that diffusers does produce is the packer's too."""
    embed = framepack_history_embed(16).to(torch.float64)
    packer = framepack_packer(embed, 4, 2, 2, torch.float64)
    history = torch.randn(1, 16, 8, 21, 19, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    old, middle, recent = history.split([4, 2, 2], dim=2)
    with torch.no_grad():
        clean, clean_2x, clean_4x = embed(recent, middle, old)
        tokens, _ = packer(history)
    n4, n2 = clean_4x.shape[1], clean_2x.shape[1]
    assert packer.token_counts(21, 19) == [n4, n2, 2 * 11 * 10] and clean.shape[1] == 2 * 10 * 9
    assert_close_to(tokens[:, : n4 + n2], torch.cat([clean_4x, clean_2x], 1), torch.float64)
    ours_1x = tokens[:, n4 + n2 :].reshape(1, 2, 11, 10, -1)[:, :, :10, :9].reshape(1, 180, -1)
    assert_close_to(ours_1x, clean, torch.float64)


def test_init_from_framepack_patch_embedding_matches_pooled_embedding():
    """FramePack-style init of the 2x/4x kernels from the base (1, 2, 2) patch embedding."""
    embed = framepack_history_embed(16).to(torch.float64)
    packer = framepack_packer(embed, 8, 4, 2, torch.float64).init_from_patch_embed(embed.proj)
    history = torch.randn(1, 16, 14, 16, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    old, middle, recent = history.split([8, 4, 2], dim=2)
    with torch.no_grad():
        tokens, _ = packer(history)
        pooled = [embed.proj(F.avg_pool3d(x, (s, s, s))).flatten(2).transpose(1, 2) for x, s in ((old, 4), (middle, 2))]
        expected = torch.cat([*pooled, embed(recent)[0]], 1)
    assert_close_to(tokens, expected, torch.float64)


# --------------------------------------------------------------------------- framepack_compatible and pooled_rope

# FramePack's default history: 16 frames at 4x, 2 at 2x, 1 at 1x (oldest first, patch size 2); fewer
# frames where a test only needs the shapes.
FRAMEPACK_TERMS = [term(16, 4, 4, 2), term(2, 2, 2, 2), term(1, 1, 1, 2)]
SMALL_FRAMEPACK_TERMS = [term(5, 4, 4, 2), term(3, 2, 2, 2), term(2, 1, 1, 2)]  # 5 -> 8 and 3 -> 4 frames padded


def framepack_tokens_from_description(packer, history):
    """FramePack's history embedding written out: the 1x term's Conv3d on the unpadded latent (floors);
    the 2x and 4x terms replicate-padded at the end to whole kernels, then their Conv3d."""
    pieces, first = [], 0
    for t, proj in zip(packer.terms, packer.projections):
        frames = history[:, :, first : first + t.num_latent_frames]
        first += t.num_latent_frames
        kernel = tuple(proj.kernel_size)
        if kernel[0] != 1 or t.spatial_stride != 1:
            pads = [(-n) % k for n, k in zip(frames.shape[2:], kernel)]
            frames = F.pad(frames, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")
        out = F.conv3d(frames, proj.weight, proj.bias, stride=kernel)  # no padding: floors what is left over
        pieces.append(out.flatten(2).transpose(1, 2))
    return torch.cat(pieces, dim=1)


@pytest.mark.parametrize("size", [(60, 104), (35, 45), (21, 19), (9, 13), (2, 3)])
def test_framepack_compatible_tokens_equal_framepack_on_every_size(size):
    h, w = size
    packer = MultiTermMemoryPacker(SMALL_FRAMEPACK_TERMS, 3, 8, framepack_compatible=True, dtype=torch.float64)
    history = torch.randn(2, 3, 10, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(h * w))
    with torch.no_grad():
        tokens, positions = packer(history)
        expected = framepack_tokens_from_description(packer, history)
    assert packer.token_counts(h, w)[2] == 2 * (h // 2) * (w // 2)  # the 1x term floors
    assert sum(packer.token_counts(h, w)) == tokens.shape[1] == positions.shape[0]
    assert_close_to(tokens, expected, torch.float64)
    default = MultiTermMemoryPacker(SMALL_FRAMEPACK_TERMS, 3, 8, dtype=torch.float64)
    assert default.token_counts(h, w)[:2] == packer.token_counts(h, w)[:2]  # coarser terms pad either way


def test_framepack_compatible_counts_at_35x45():
    fp = MultiTermMemoryPacker(FRAMEPACK_TERMS, 16, 8, framepack_compatible=True)
    default = MultiTermMemoryPacker(FRAMEPACK_TERMS, 16, 8)
    assert fp.token_counts(35, 45) == [4 * 5 * 6, 9 * 12, 17 * 22] and sum(fp.token_counts(35, 45)) == 602
    assert (
        sum(default.token_counts(35, 45))
        == 642
        == multi_term_memory_patchification(FRAMEPACK_TERMS, 35, 45)["total_tokens"]
    )
    assert fp.token_counts(60, 104) == default.token_counts(60, 104)  # even sizes: no difference
    assert fp.positions(35, 45).shape == (602, 3)
    assert "framepack_compatible=True" in repr(fp) and "framepack_compatible" not in repr(default)
    with pytest.raises(TypeError, match="framepack_compatible must be a bool"):
        MultiTermMemoryPacker(FRAMEPACK_TERMS, 16, 8, framepack_compatible="yes")


def test_framepack_compatible_matches_diffusers_on_odd_sizes():
    """diffusers' FramePack embedding, which floors its 1x term, equals the option on an odd latent."""
    embed = framepack_history_embed(16).to(torch.float64)
    packer = framepack_packer(embed, 4, 2, 2, torch.float64)
    fp = MultiTermMemoryPacker(packer.terms, 16, 16, framepack_compatible=True, dtype=torch.float64)
    fp.load_state_dict(packer.state_dict())
    history = torch.randn(1, 16, 8, 21, 19, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    old, middle, recent = history.split([4, 2, 2], dim=2)
    with torch.no_grad():
        clean, clean_2x, clean_4x = embed(recent, middle, old)
        tokens, _ = fp(history)
    assert_close_to(tokens, torch.cat([clean_4x, clean_2x, clean], 1), torch.float64)


def framepack_style_rope(theta=256.0, dims=(4, 6, 6)):
    """Per-position rotary features as FramePack's HunyuanVideo RoPE computes them: for each axis
    (frame, row, column) and each of its dim/2 frequencies 1/theta^(2i/dim), cos and sin of
    frequency * coordinate, each repeated twice; laid out [cos t, cos y, cos x, sin t, sin y, sin x]."""

    def features(frame, row, col):
        cos, sin = [], []
        for coordinate, dim in zip((frame, row, col), dims):
            freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
            angles = (coordinate[..., None].double() * freqs).repeat_interleave(2, dim=-1)
            cos.append(angles.cos())
            sin.append(angles.sin())
        return torch.cat(cos + sin, dim=-1)

    return features


def pooled_rope_from_description(terms, h, w, features, frame_indices):
    """Token by token: the window's positions on the 1x patch grid (rows h // p, columns w // p), each
    coordinate replicate-padded (clamped to the term's last frame and the grid's last row and column),
    and the mean of the features (cos and sin) over them."""
    p = terms[0]["patch_size"]
    rows, cols = h // p, w // p
    out, first = [], 0
    for t in terms:
        n, kt, s = t["num_latent_frames"], t["temporal_stride"], t["spatial_stride"]
        term_frames = frame_indices[first : first + n]
        first += n
        grid = MultiTermMemoryPacker([t], 1, 1, framepack_compatible=True).token_counts(h, w)[0]
        gt = -(-n // kt)
        gh = h // p if (kt, s) == (1, 1) else -(-h // (s * p))
        gw = w // p if (kt, s) == (1, 1) else -(-w // (s * p))
        assert gt * gh * gw == grid
        for ti, i, j in itertools.product(range(gt), range(gh), range(gw)):
            fs = torch.tensor([term_frames[min(ti * kt + a, n - 1)] for a in range(kt)], dtype=torch.float64)
            ys = torch.tensor([min(i * s + b, rows - 1) for b in range(s)], dtype=torch.float64)
            xs = torch.tensor([min(j * s + c, cols - 1) for c in range(s)], dtype=torch.float64)
            window = features(*torch.meshgrid(fs, ys, xs, indexing="ij"))
            out.append(window.reshape(-1, window.shape[-1]).mean(0))
    return torch.stack(out)


@pytest.mark.parametrize("size", [(60, 104), (35, 45), (21, 19), (9, 13)])
def test_pooled_rope_equals_framepack_description(size):
    h, w = size
    terms = FRAMEPACK_TERMS if size == (60, 104) else SMALL_FRAMEPACK_TERMS
    packer = MultiTermMemoryPacker(terms, 4, 8, framepack_compatible=True)
    frames = packer.num_frames
    # FramePack's indices are not contiguous: e.g. the 1x frames sit after a gap
    frame_indices = [*range(1, frames - 1), frames + 5, frames + 9][:frames]
    rope = framepack_style_rope()
    got = packer.pooled_rope(rope, h, w, frame_indices=frame_indices)
    expected = pooled_rope_from_description(terms, h, w, rope, frame_indices)
    assert got.dtype == torch.float64 and got.shape == (sum(packer.token_counts(h, w)), 32)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    # the same from the tensor of per-position features
    axes = [torch.tensor(frame_indices), torch.arange(h // 2), torch.arange(w // 2)]
    grid = rope(*torch.meshgrid(*(a.double() for a in axes), indexing="ij"))
    torch.testing.assert_close(packer.pooled_rope(grid, h, w), expected, atol=1e-12, rtol=0)
    cos, sin = packer.pooled_rope((grid[..., :16], grid[..., 16:]), h, w)
    assert torch.equal(torch.cat([cos, sin], -1), packer.pooled_rope(grid, h, w))


def test_pooled_rope_names_a_latent_smaller_than_a_patch():
    packer = MultiTermMemoryPacker([MemoryTerm(2, 2, 2, 2), MemoryTerm(1, 1, 1, 2)], 2, 3)
    features = lambda f, r, c: torch.stack([f + r + c], -1)  # noqa: E731
    assert packer(torch.randn(1, 2, 3, 1, 4))[0].shape[1] > 0  # the packer itself pads to whole patches
    with pytest.raises(ValueError, match="latent_h and latent_w must be >= the patch size 2, got 1x4"):
        packer.pooled_rope(features, 1, 4)
    assert packer.pooled_rope(features, 2, 4).shape == (3, 1)


def test_pooled_rope_differs_from_rope_at_the_centre_positions():
    packer = MultiTermMemoryPacker(FRAMEPACK_TERMS, 4, 8, framepack_compatible=True)
    rope = framepack_style_rope(theta=10.0)
    pooled = packer.pooled_rope(rope, 60, 104)
    centres = packer.positions(60, 104, dtype=torch.float64)
    # centre positions in 1x patch units: latent (row, col) centre -> (row - 0.5) / 2
    at_centres = rope(centres[:, 0], (centres[:, 1] - 0.5) / 2, (centres[:, 2] - 0.5) / 2)
    n4, n2, n1 = packer.token_counts(60, 104)
    torch.testing.assert_close(pooled[n4 + n2 :], at_centres[n4 + n2 :], atol=1e-12, rtol=0)  # 1x: one position
    assert (pooled[:n4] - at_centres[:n4]).abs().max() > 0.1  # the mean of cos is not the cos of the mean


def test_pooled_rope_matches_diffusers_framepack():
    """diffusers' FramePack transformer: its RoPE module on the 1x grid, padded and pooled per term by
    its own _pad_rotary_emb; the option's pooled_rope from the same per-position features."""
    pytest.importorskip("diffusers")
    try:
        from diffusers.models.transformers import transformer_hunyuan_video_framepack as framepack
    except ImportError as exc:
        pytest.skip(f"this diffusers has no HunyuanVideo FramePack transformer: {exc}")
    rope = framepack.HunyuanVideoFramepackRotaryPosEmbed(patch_size=2, patch_size_t=1, rope_dim=[4, 6, 6], theta=256.0)
    pad_and_pool = framepack.HunyuanVideoFramepackTransformer3DModel._pad_rotary_emb
    # 45 and 57: the 2x term has a row or column of tokens past FramePack's pooled RoPE grid; 57 also the 4x term
    for h, w in ((60, 104), (35, 46), (35, 45), (57, 60), (61, 57)):
        packer = MultiTermMemoryPacker(SMALL_FRAMEPACK_TERMS, 4, 8, framepack_compatible=True)
        indices = torch.arange(packer.num_frames) * 3 + 1
        theirs_cos, theirs_sin = [], []
        first = 0
        for t in packer.terms:
            n, kt, s = t.num_latent_frames, t.temporal_stride, t.spatial_stride
            emb = rope(indices[first : first + n], h, w, device="cpu")
            first += n
            if (kt, s) != (1, 1):
                emb = pad_and_pool(None, emb, h // 2, w // 2, (kt, s, s))
            theirs_cos.append(emb[0])
            theirs_sin.append(emb[1])
        full = rope(indices, h, w, device="cpu")
        grids = tuple(f.unflatten(0, (packer.num_frames, h // 2, w // 2)) for f in full)
        cos, sin = packer.pooled_rope(grids, h, w)
        # Where a coarse term's tokens (ceil of the latent over s * 2) outnumber FramePack's pooled RoPE
        # windows (ceil of the 1x grid over s) in rows or columns, FramePack's RoPE and tokens disagree:
        # compare the tokens that FramePack has RoPE for.
        keep = []
        for t, n in zip(packer.terms, packer.token_counts(h, w)):
            s = t.spatial_stride
            rows, cols = (-(-size // (2 * s)) if s > 1 else size // 2 for size in (h, w))
            rope_rows, rope_cols = -(-(h // 2) // s), -(-(w // 2) // s)
            row, col = torch.arange(n) // cols % rows, torch.arange(n) % cols
            keep.append((row < rope_rows) & (col < rope_cols))
        keep = torch.cat(keep)
        mismatched = (h, w) in ((35, 45), (57, 60), (61, 57))
        assert bool(keep.all()) != mismatched, (h, w)
        cos, sin = cos[keep], sin[keep]
        assert torch.cat(theirs_cos).shape[0] == cos.shape[0]
        torch.testing.assert_close(cos, torch.cat(theirs_cos), atol=1e-6, rtol=0)
        torch.testing.assert_close(sin, torch.cat(theirs_sin), atol=1e-6, rtol=0)


def test_pooled_rope_bad_arguments():
    packer = MultiTermMemoryPacker(SMALL_FRAMEPACK_TERMS, 4, 8, framepack_compatible=True)
    with pytest.raises(ValueError, match=r"features must have shape \(T, rows, cols, C\) = \(10, 5, 6, C\)"):
        packer.pooled_rope(torch.zeros(10, 6, 6, 4), 10, 12)
    with pytest.raises(TypeError, match="features must be a tensor"):
        packer.pooled_rope("rope", 10, 12)
    with pytest.raises(TypeError, match="frame_indices is only used with a callable"):
        packer.pooled_rope(torch.zeros(10, 5, 6, 4), 10, 12, frame_indices=list(range(10)))
    with pytest.raises(ValueError, match="frame_indices must hold one index per history frame"):
        packer.pooled_rope(framepack_style_rope(), 10, 12, frame_indices=[1, 2])
    with pytest.raises(ValueError, match="one patch size"):
        MultiTermMemoryPacker([term(2, 2, 2, 2), term(1, 1, 1, 1)], 4, 8).pooled_rope(framepack_style_rope(), 8, 8)


def test_framepack_compatible_module_path_crops_too():
    """A projection that is not a plain Conv3d (here: one with a forward hook) is called as a module;
    it gets the same cropped 1x term, so the tokens equal the matrix-product path's."""
    packer = MultiTermMemoryPacker(SMALL_FRAMEPACK_TERMS, 3, 8, framepack_compatible=True, dtype=torch.float64)
    history = torch.randn(1, 3, 10, 13, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain, _ = packer(history)
        handle = packer.projections[2].register_forward_hook(lambda module, args, out: out)
        try:
            hooked, _ = packer(history)
        finally:
            handle.remove()
    assert hooked.shape == plain.shape == (1, sum(packer.token_counts(13, 11)), 8)
    assert_close_to(hooked, plain, torch.float64)
