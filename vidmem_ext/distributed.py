"""Frame-sharded temporal momentum over torch.distributed (docs/semantics.md, "Temporal momentum", split by frames).

Each rank of a process group holds a contiguous block of the video's frames, in
rank order (blocks may be uneven or empty). `temporal_momentum` returns on every
rank the matching block of the single-process op over the concatenated frames,
forward and backward, with one all-gather of O(world x frame slice) bytes each
way and never the whole tensor.

Derivation (per lane; m may vary per lane, D_q = m^(L_q) for a block of L_q frames)
----------------------------------------------------------------------------------
Forward. Rank r holds global frames [S_r, S_r + L_r). Unrolling the EMA from the
state c_r = y_(S_r - 1) just before the block:

    y_(S_r + t) = z_t + m^(t+1) * c_r,   z = the local EMA from a zero state (initial = 0),

because the zero-state scan is linear and the state's weight decays by m per frame.
The state after the block is c_(r+1) = z_(L_r - 1) + D_r * c_r, an affine map of c_r,
so with e_q = z_(L_q - 1) the carry into rank r is the rank-ordered fold

    c_r = D_(r-1) (... (D_q0 * s + e_q0) ...) + e_(r-1),    empty ranks: D = 1, e = 0 (identity),

where q0 is the first non-empty rank and s the state before global frame 0:
s = `initial` if given, else s = x_0 (the video's first frame), since then
y_0 = m x_0 + (1 - m) x_0 = x_0. Rank 0 may be empty and a rank cannot know
before the exchange whether it holds frame 0, so every rank sends its first
frame beside its end state; each rank gathers all (e_q, x_q[0], L_q) and folds
the ranks before it locally. Payload per rank: 2 frame slices, gathered from every
rank, after a fixed-size 128-byte header gathered in a collective of its own (so that
ranks that disagree on dtype or shape raise the same error instead of exchanging
messages of different sizes, which the backends abort or hang on).

Backward. With g = dL/dy_r (this rank's part of a global loss) and
h_r = dL/dc_r = sum_t m^(t+1) g_t, the reverse recurrence a_t = g_t + m a_(t+1)
crosses blocks the other way: dL/de_r = sum_(r' > r) h_r' * prod_(r < p < r') D_p,
a reverse fold of the gathered h. So backward gathers one slice h_r per rank:
- dL/dz = g plus dL/de_r on the block's last frame, then the local op's own backward;
- without `initial`, the rank holding frame 0 also gets dL/ds = h_q0 + D_q0 dL/de_q0 on x_0;
- momentum: the scan, the correction m^(t+1) and the decays D_q of the fold all use m.

Replicated arguments (a momentum tensor and `initial`): each rank returns its LOCAL
contribution, the gradient of the global loss through this rank's own uses of
them (its scan, its correction, its fold over earlier ranks); the single-process
gradient is the SUM over ranks. This is the convention of replicated parameters
under data / sequence parallelism: all-reduce their grads over the group (DDP
does this for parameters of a module it wraps), e.g.
``dist.all_reduce(momentum.grad, group=group)``. Gradients of x_local are
complete on each rank (they include every later rank's influence).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator

import torch
import torch.distributed as dist

from ._checks import acc_dtype
from .momentum import check_args
from .momentum import temporal_momentum as _local_temporal_momentum

__all__ = ["temporal_momentum", "record_communication", "HEADER_BYTES"]

_DTYPE_CODES = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3, torch.float64: 4}

# Header exchanged before any payload, in its own all-gather: 16 int64 slots, the same size on every rank
# whatever its arguments, so that a disagreement is found (and reported alike on every rank) before any
# message whose size depends on dtype or shape.
_HEADER_SLOTS = 16
HEADER_BYTES = _HEADER_SLOTS * 8
_MAGIC = 0x766D5F6D6F6D  # "vm_mom": a different collective on some rank shows up as a bad magic
_MAX_LISTED_DIMS = 8  # frame-slice dims written out for error messages (all dims enter the hash)
_FLAG_INITIAL, _FLAG_MOMENTUM_TENSOR, _FLAG_NEEDS_GRAD = 1, 2, 4
_FLAG_BAD_ARGUMENTS = 8  # the rank's own argument checks failed: every rank raises, none waits for it
# x_local's number of dims and the frame dim, in the flags' upper bits (every other slot is taken): ranks that
# scan along different axes of the same frame-slice shape would otherwise go unnoticed
_NDIM_SHIFT, _DIM_SHIFT, _DIM_MASK = 16, 32, 0xFFFF
# slot indices
_S_MAGIC, _S_LEN, _S_FLAGS, _S_DTYPE, _S_NDIM, _S_NUMEL, _S_HASH, _S_MOMENTUM, _S_DIMS = range(9)

_recorders: list[list[dict]] = []


@contextlib.contextmanager
def record_communication() -> Iterator[list[dict]]:
    """Record every exchange made by `temporal_momentum` inside the block (this process only).

    Yields a list that receives one dict per collective: ``direction`` ("header",
    "forward" or "backward"), ``sent_bytes`` (this rank's message), ``gathered_bytes`` (world x
    message: what each rank receives), ``world_size``. Used by the benchmark and tests.
    """
    log: list[dict] = []
    _recorders.append(log)
    try:
        yield log
    finally:
        _recorders.remove(log)


def _all_gather(out: torch.Tensor, message: torch.Tensor, group, direction: str) -> None:
    """All-gather `message` (1-D) from every rank into the preallocated `out` (world x message, flat)."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # the former is torch >= 2.13
    gather(out, message, group=group)
    for log in _recorders:
        log.append(
            {
                "direction": direction,
                "sent_bytes": message.numel() * message.element_size(),
                "gathered_bytes": out.numel() * out.element_size(),
                "world_size": dist.get_world_size(group),
            }
        )


def _shape_hash(shape) -> int:
    h = len(shape)
    for d in shape:
        h = (h * 1_000_003 + int(d)) % (1 << 61)
    return h


class _Plan:
    """What one call knows before the exchange (non-tensor arguments of _CarryExchange)."""

    def __init__(self, group, rank, world, length, slice_shape, dtype, m_value, has_initial, needs_grad, ndim, dim):
        self.group, self.rank, self.world, self.length = group, rank, world, length
        self.ndim, self.dim = ndim, dim
        self.slice_shape, self.dtype, self.acc = slice_shape, dtype, acc_dtype(dtype)
        self.m_value, self.has_initial, self.needs_grad = m_value, has_initial, needs_grad
        self.lengths: list[int] = []  # every rank's block length, from the header exchange
        self.m_zero: torch.Tensor | None = None  # lanes of momentum 0, set before the carry exchange

    def header(self) -> torch.Tensor:
        h = torch.zeros(_HEADER_SLOTS, dtype=torch.int64)
        flags = (
            (_FLAG_INITIAL if self.has_initial else 0)
            | (_FLAG_MOMENTUM_TENSOR if self.m_value is None else 0)
            | (_FLAG_NEEDS_GRAD if self.needs_grad else 0)
            | (min(self.ndim, _DIM_MASK) << _NDIM_SHIFT)
            | (min(self.dim, _DIM_MASK) << _DIM_SHIFT)
        )
        h[_S_MAGIC], h[_S_LEN], h[_S_FLAGS], h[_S_DTYPE] = _MAGIC, self.length, flags, _DTYPE_CODES[self.dtype]
        h[_S_NDIM], h[_S_NUMEL], h[_S_HASH] = (
            len(self.slice_shape),
            self.slice_shape.numel(),
            _shape_hash(self.slice_shape),
        )
        if self.m_value is not None:  # exact bits, so that any difference between ranks is caught
            h[_S_MOMENTUM] = struct.unpack("<q", struct.pack("<d", self.m_value))[0]
        for i, d in enumerate(self.slice_shape[:_MAX_LISTED_DIMS]):
            h[_S_DIMS + i] = d
        return h


def _bad_arguments_header() -> torch.Tensor:
    h = torch.zeros(_HEADER_SLOTS, dtype=torch.int64)
    h[_S_MAGIC], h[_S_FLAGS] = _MAGIC, _FLAG_BAD_ARGUMENTS
    return h


def _header_device(x_local, group) -> torch.device:
    """Where the header goes: x_local's device, or (x_local not a tensor) the backend's."""
    if isinstance(x_local, torch.Tensor):
        return x_local.device
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _describe_slice(row) -> str:
    ndim = int(row[_S_NDIM])
    dims = [int(d) for d in row[_S_DIMS : _S_DIMS + min(ndim, _MAX_LISTED_DIMS)]]
    return f"({', '.join(map(str, dims))}{', ...' if ndim > _MAX_LISTED_DIMS else ''})"


def _check_headers(headers: torch.Tensor) -> list[int]:
    """Cross-rank consistency checks on the gathered headers (every rank raises the same error). Returns lengths."""
    rows = headers.tolist()
    world = len(rows)

    def differing(slot, mask=None):
        return len({(r[slot] & mask) if mask else r[slot] for r in rows}) > 1

    bad_magic = [q for q in range(world) if rows[q][_S_MAGIC] != _MAGIC]
    if bad_magic:
        raise RuntimeError(
            f"vidmem_ext.distributed.temporal_momentum: ranks {bad_magic} of the group sent a different message; "
            "every rank of the group must call temporal_momentum together, in the same order"
        )
    bad_arguments = [q for q in range(world) if rows[q][_S_FLAGS] & _FLAG_BAD_ARGUMENTS]
    if bad_arguments:
        raise ValueError(
            f"vidmem_ext.distributed.temporal_momentum: the arguments of ranks {bad_arguments} failed their checks "
            "(the error there says which); every rank of the group stops"
        )
    if differing(_S_DTYPE):
        names = {v: k for k, v in _DTYPE_CODES.items()}
        dtypes = ", ".join(f"rank {q}: {names.get(r[_S_DTYPE])}" for q, r in enumerate(rows))
        raise ValueError(f"x_local must have the same dtype on every rank, got {dtypes}")
    if differing(_S_NDIM) or differing(_S_NUMEL) or differing(_S_HASH):
        shapes = ", ".join(f"rank {q}: {_describe_slice(r)}" for q, r in enumerate(rows))
        raise ValueError(f"x_local must have the same frame-slice shape (all dims but dim) on every rank, got {shapes}")
    axes = _DIM_MASK << _NDIM_SHIFT | _DIM_MASK << _DIM_SHIFT
    if differing(_S_FLAGS, axes):
        dims = ", ".join(
            f"rank {q}: dim {r[_S_FLAGS] >> _DIM_SHIFT & _DIM_MASK} of {r[_S_FLAGS] >> _NDIM_SHIFT & _DIM_MASK}"
            for q, r in enumerate(rows)
        )
        raise ValueError(f"dim must be the same frame axis of an x_local of as many dims on every rank, got {dims}")
    if differing(_S_FLAGS, _FLAG_INITIAL):
        given = [q for q in range(world) if rows[q][_S_FLAGS] & _FLAG_INITIAL]
        raise ValueError(f"initial must be given on every rank or on none; it was given on ranks {given} only")
    if differing(_S_FLAGS, _FLAG_MOMENTUM_TENSOR) or differing(_S_MOMENTUM):

        def momentum_of(row):
            if row[_S_FLAGS] & _FLAG_MOMENTUM_TENSOR:
                return "a tensor"
            return repr(struct.unpack("<d", struct.pack("<q", row[_S_MOMENTUM]))[0])

        kinds = ", ".join(f"rank {q}: {momentum_of(r)}" for q, r in enumerate(rows))
        raise ValueError(f"momentum must be the same on every rank, got {kinds}")
    if differing(_S_FLAGS, _FLAG_NEEDS_GRAD):
        grads = [q for q in range(world) if rows[q][_S_FLAGS] & _FLAG_NEEDS_GRAD]
        raise RuntimeError(
            f"autograd must be recording on every rank or on none (backward is a collective too); the call needs "
            f"gradients on ranks {grads} only (x_local, momentum or initial requires grad there, in grad mode)"
        )
    return [r[_S_LEN] for r in rows]


def _lane_shape(m: torch.Tensor, slice_ndim: int) -> torch.Tensor:
    """m with leading 1s so that it has the frame slice's number of dims (it already broadcasts to it)."""
    return m.reshape((1,) * (slice_ndim - m.dim()) + tuple(m.shape))


def _clamped_decay(decay, m_zero: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """decay = m^n (a tensor or a float) with a product that under- or overflowed for a nonzero m
    replaced by the smallest subnormal or the largest finite number of like's dtype: times an infinite
    (or zero) state it then keeps that state, as n frame-by-frame steps do, instead of 0 * inf = NaN
    (as decay_times in csrc/temporal_momentum/temporal_momentum.h). m = 0 keeps its exact 0."""
    info = torch.finfo(like.dtype)
    decay = torch.as_tensor(decay, dtype=like.dtype, device=like.device)
    decay = torch.where((decay == 0) & ~m_zero, info.tiny * info.eps, decay)
    return torch.where(decay.isinf(), torch.copysign(torch.as_tensor(info.max, dtype=like.dtype), decay), decay)


def _times_decay(decay, state: torch.Tensor, m_zero: torch.Tensor) -> torch.Tensor:
    """decay * state as _clamped_decay keeps it, and exactly 0 in lanes of momentum 0 (which ignore
    carries: their gradients must not pick up 0 * inf)."""
    product = _clamped_decay(decay, m_zero, state) * state
    return torch.where(m_zero, torch.zeros((), dtype=state.dtype, device=state.device), product)


class _NoGradAtZeroMomentum(torch.autograd.Function):
    """The carry, unchanged; its gradient is 0 in lanes of momentum 0, whose outputs do not depend on it
    (the formula's m^(t+1) = 0 times an infinite gradient would be NaN)."""

    @staticmethod
    def forward(ctx, carry, m_zero):
        ctx.save_for_backward(m_zero)
        return carry.clone()

    @staticmethod
    def backward(ctx, grad):
        (m_zero,) = ctx.saved_tensors
        return torch.where(m_zero, torch.zeros((), dtype=grad.dtype, device=grad.device), grad), None


def _zero_momentum(m, m_value: float, acc: torch.dtype, device) -> torch.Tensor:
    """Where momentum, rounded to the accumulation dtype as the kernels read it, is exactly 0: per lane
    for a tensor m (lane-shaped), else one flag (m_value is already rounded)."""
    return (m.to(acc) == 0) if m is not None else torch.tensor(m_value == 0, device=device)


class _CarryExchange(torch.autograd.Function):
    """carry_r = fold over earlier ranks of (D_q, e_q) from s; one all-gather forward, one backward."""

    @staticmethod
    def forward(ctx, end_state, first_frame, m_tensor, initial, anchor, plan):
        del anchor  # only there so that the output requires grad on ranks whose block is empty
        acc, slice_shape, rank, world = plan.acc, plan.slice_shape, plan.rank, plan.world
        numel = slice_shape.numel()
        device = end_state.device

        payload = torch.cat([end_state.reshape(-1), first_frame.reshape(-1)])
        gathered = torch.empty(world * payload.numel(), dtype=acc, device=device)
        _all_gather(gathered, payload, plan.group, "forward")
        payloads = gathered.view(world, payload.numel())
        lengths = plan.lengths
        ends = payloads[:, :numel].reshape(world, *slice_shape)
        firsts = payloads[:, numel:].reshape(world, *slice_shape)

        nonempty = [q for q in range(world) if lengths[q] > 0]
        first_rank = nonempty[0] if nonempty else None
        m = None if m_tensor is None else _lane_shape(m_tensor.detach().to(acc), len(slice_shape))

        def decay(q):  # D_q = m^(L_q), per lane or a float
            return plan.m_value ** lengths[q] if m is None else m ** lengths[q]

        m_zero = plan.m_zero
        if plan.has_initial:
            carry = initial.detach().to(acc)
        elif first_rank is not None:
            carry = firsts[first_rank]
        else:
            carry = torch.zeros(slice_shape, dtype=acc, device=device)
        carries_before = {}  # carry entering each non-empty earlier rank, for d(decay)/dm in backward
        for q in nonempty:
            if q >= rank:
                break
            carries_before[q] = carry
            carry = _times_decay(decay(q), carry, m_zero) + ends[q]

        ctx.plan, ctx.lengths, ctx.first_rank = plan, lengths, first_rank
        ctx.carries_before = carries_before if (m_tensor is not None and m_tensor.requires_grad) else None
        ctx.save_for_backward(m_tensor)
        ctx.m = m
        return carry.clone()  # never an alias of `initial` or of the gather buffer

    @staticmethod
    def backward(ctx, grad_carry):
        if torch.is_grad_enabled():
            # A backward that builds a graph (create_graph=True) would need this exchange's own
            # derivative; once_differentiable only guarded .backward() through it, while
            # autograd.grad(..., x) skipped the carry's second-order terms without a word.
            raise RuntimeError(
                "vidmem_ext.distributed.temporal_momentum: second-order gradients (create_graph=True) are not "
                "supported; the single-process vidmem_ext.temporal_momentum has them"
            )
        plan, lengths, first_rank = ctx.plan, ctx.lengths, ctx.first_rank
        acc, slice_shape, rank, world = plan.acc, plan.slice_shape, plan.rank, plan.world
        (m_tensor,) = ctx.saved_tensors
        m = ctx.m

        def decay(q):
            return plan.m_value ** lengths[q] if m is None else m ** lengths[q]

        # h_r = dL/dc_r from this rank's outputs; every rank needs the later ranks' h.
        h = grad_carry.to(acc).contiguous()
        gathered = torch.empty(world * h.numel(), dtype=acc, device=h.device)
        _all_gather(gathered, h.reshape(-1), plan.group, "backward")
        grads_in = gathered.view(world, *slice_shape)

        # dL/de_r = sum over later ranks r' of h_r' * prod_(r < p < r') D_p (a reverse fold; empty ranks are identity).
        m_zero = plan.m_zero
        grad_end = torch.zeros(slice_shape, dtype=acc, device=h.device)
        for q in range(world - 1, rank, -1):
            if lengths[q] > 0:
                grad_end = grads_in[q] + _times_decay(decay(q), grad_end, m_zero)

        needs = ctx.needs_input_grad
        grad_first = None
        if needs[1] and not plan.has_initial and rank == first_rank:
            # dL/ds, s = x_0: every rank's carry starts from it
            grad_first = h + _times_decay(decay(rank), grad_end, m_zero)

        earlier = [q for q in range(rank) if lengths[q] > 0]
        grad_initial = None
        if needs[3] and plan.has_initial:  # local contribution: h_r * prod_(p < r) D_p
            grad_initial = h
            for q in earlier:
                grad_initial = _times_decay(decay(q), grad_initial, m_zero)

        grad_m = None
        if needs[2] and m_tensor is not None:  # local contribution through the decays D_q = m^(L_q), q < r
            grad_m = torch.zeros(slice_shape, dtype=acc, device=h.device)
            weight = h
            for q in reversed(earlier):
                grad_m = grad_m + weight * ctx.carries_before[q] * (lengths[q] * m ** (lengths[q] - 1))
                weight = weight * decay(q)
            grad_m = grad_m.sum_to_size(m_tensor.shape).to(m_tensor.dtype)

        grad_end = grad_end if needs[0] and plan.length > 0 else None
        grad_initial = grad_initial.to(plan.dtype) if grad_initial is not None else None
        return grad_end, grad_first, grad_m, grad_initial, None, None


def temporal_momentum(
    x_local: torch.Tensor,
    momentum=0.98,
    dim: int = 0,
    group: dist.ProcessGroup | None = None,
    *,
    initial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Temporal momentum (the EMA over frames) of a video whose frames are split across the ranks of `group`.

    Every rank of the group calls this together, each with its contiguous block of
    frames in rank order; blocks may differ in length and may be empty. The result
    on each rank is the matching block of
    ``vidmem_ext.temporal_momentum(cat(blocks, dim), momentum, dim, initial)``,
    and so are the gradients, to rounding (the carries compose m^n in another order;
    momentum exactly 0 or 1 is exact).

    Args:
        x_local: this rank's frames, a floating tensor (fp16, bf16, fp32, fp64). The
            frame-slice shape (all dims but `dim`) and dtype must be the same on every rank.
        momentum: a float in [0, 1], or a tensor broadcastable to one frame slice (e.g.
            per channel), which may require grad. Must be the same on every rank
            (float values are checked; tensor values are not, as that would cost an
            exchange of their own).
        dim: the frame axis.
        group: the process group (None: the default group). Ranks are group ranks.
        initial: optional global state before the video's first frame
            (y_0 = m * initial + (1 - m) * x_0), of the frame-slice shape and x's
            dtype. Pass it on every rank (the same value) or on none.

    Returns:
        This rank's block of the result: x_local's shape, dtype and device.

    Gradients: x_local's gradient is complete. The gradients of a momentum tensor
    and of `initial` are this rank's local contributions (see the module docstring);
    their sum over the group equals the single-process gradient, so all-reduce
    them as for any replicated parameter. backward is a collective: every rank
    must run it through its output (as in any sequence-parallel model).

    Communication, per call (W = group size, S = frame-slice elements, b = 4 bytes,
    or 8 for fp64 inputs; fp16/bf16 carry their states in fp32):
        header:   one all-gather of 128 bytes per rank (lengths, dtype, slice shape,
                  dim, momentum, `initial` presence, grad mode), W*128 received;
        forward:  one all-gather of 2*S*b bytes per rank (end state, first frame),
                  W*2*S*b received on each rank;
        backward: one all-gather of S*b bytes per rank, W*S*b received.
    That is O(W x frame slice), independent of the number of frames. The header
    goes first, in its own collective of a fixed size, so that every rank checks
    that slice shapes, frame axes, dtypes, momentum, `initial` and grad mode agree and raises
    the same ValueError (naming what each rank has) before any message whose size
    depends on them.

    The local scans use the single-process op (its compiled kernels when built).
    """
    try:
        dim, slice_shape, m_tensor, m_value = check_args(x_local, momentum, dim, initial, x_name="x_local")
        bad_arguments = None
    except (TypeError, ValueError, IndexError) as exc:
        bad_arguments = exc
    initialized = dist.is_available() and dist.is_initialized()
    if initialized and group is dist.GroupMember.NON_GROUP_MEMBER:  # what new_group returns to non-members
        raise RuntimeError("group: this process is not a member of the given process group")
    if group is not None and not (dist.is_available() and isinstance(group, dist.ProcessGroup)):
        # e.g. `initial` passed fourth, as the single-process op takes it (here it is keyword-only)
        bad_group = TypeError(
            f"group must be a torch.distributed.ProcessGroup or None, got {type(group).__name__}; "
            "pass initial by keyword (initial=...)"
        )
        if not initialized:
            raise bad_group
        # The other ranks most likely meant the default group and wait in its header exchange: tell them.
        bad_arguments, group = bad_group, None
    if not initialized:
        if bad_arguments is not None:
            raise bad_arguments
        raise RuntimeError(
            "vidmem_ext.distributed.temporal_momentum needs an initialized default process group "
            "(torch.distributed.init_process_group); use vidmem_ext.temporal_momentum in a single process"
        )
    rank = dist.get_rank(group)
    if rank < 0:
        raise RuntimeError("group: this process is not a member of the given process group")
    world = dist.get_world_size(group)
    if bad_arguments is not None:
        # The other ranks are waiting in the header exchange: tell them, so that every rank raises now
        # instead of the others hanging until the collective times out.
        device = _header_device(x_local, group)
        headers = torch.empty(world * _HEADER_SLOTS, dtype=torch.int64, device=device)
        try:
            _all_gather(headers, _bad_arguments_header().to(device), group, "header")
        except Exception as exc:  # e.g. the others wait on another group: still this rank's own error
            raise bad_arguments from exc
        raise bad_arguments

    x = x_local
    length = x.shape[dim]
    acc = acc_dtype(x.dtype)
    if m_value is not None:
        # As the kernels read it: rounded to the accumulation dtype (1 - 1e-9 is exactly 1 in fp32, a lane that
        # keeps its state), and -0.0 is 0.0; the carries and the header use this value.
        m_value = torch.tensor(m_value, dtype=acc).item() + 0.0
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, m_tensor, initial))
    plan = _Plan(
        group, rank, world, length, slice_shape, x.dtype, m_value, initial is not None, needs_grad, x.dim(), dim
    )
    # The header first, in its own fixed-size collective: every rank checks every rank's arguments and
    # raises the same error before any message whose size depends on them.
    headers = torch.empty(world * _HEADER_SLOTS, dtype=torch.int64, device=x.device)
    _all_gather(headers, plan.header().to(x.device), group, "header")
    plan.lengths = _check_headers(headers.view(world, _HEADER_SLOTS).cpu())

    if length > 0:
        # z: the block from a zero state, in the accumulation dtype (fp16 and bf16 round once, at the end,
        # as the single-process op does; rounding z first put 20% of the outputs 1 ulp off).
        x_acc = x.to(acc)
        zero_state = x_acc.new_full(slice_shape, -0.0)  # the exact additive identity: a carried -0.0 stays -0.0
        scanned = _local_temporal_momentum(x_acc, momentum, dim, initial=zero_state)
        end_state = scanned.select(dim, length - 1)
        first_frame = x_acc.select(dim, 0)
    else:
        scanned = x.to(acc)
        end_state = first_frame = torch.zeros(slice_shape, dtype=acc, device=x.device)

    # lanes of momentum exactly 0 (or the one flag of a float momentum), for the exchange and the output
    plan.m_zero = _zero_momentum(
        None if m_tensor is None else _lane_shape(m_tensor.detach(), len(slice_shape)), m_value, acc, x.device
    )
    carry = _CarryExchange.apply(end_state, first_frame, m_tensor, initial, x, plan)

    # y_t = z_t + m^(t+1) * carry, per lane; the exponents run along dim.
    exponent_shape = [1] * x.dim()
    exponent_shape[dim] = length
    exponents = torch.arange(1, length + 1, dtype=acc, device=x.device).reshape(exponent_shape)
    if m_tensor is None:
        weights = torch.pow(m_value, exponents)
    else:
        weights = torch.pow(_lane_shape(m_tensor.to(acc), len(slice_shape)).unsqueeze(dim), exponents)
    m_zero = plan.m_zero
    zero_lanes = m_zero.unsqueeze(dim) if m_zero.dim() else m_zero
    # weights that underflowed keep an infinite carry infinite (and its gradient); lanes of momentum 0
    # pass the carry no gradient (0 * an infinite gradient would be NaN).
    carry = _NoGradAtZeroMomentum.apply(carry, m_zero)
    out = torch.addcmul(scanned, _clamped_decay(weights, zero_lanes, weights), carry.unsqueeze(dim))
    # Momentum exactly 0 is exact: y = x, even where an earlier rank's carry is not finite (0 * inf = NaN).
    # Only where the formula differs from that (a non-finite carry), so that d/dm stays the formula's;
    # torch.where keeps the carry in the graph, so that backward's collective runs on every rank.
    out = torch.where(zero_lanes & (out.detach() != scanned.detach()), scanned, out)
    return out.to(x.dtype)
