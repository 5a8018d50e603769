"""The seeded zeroth-order engine shared by MeZO, Hi-ZFO and Bilevel-ZOFO.

Public API (stable; other methods build on it):
  ``ZONoise(params, seed, keep=False, kind="gaussian", threads=1)``: the direction z of one step.
      ``.add(scale)`` (p += scale*z), ``.restore()``, ``.offset`` (accumulated scale),
      ``.update(g, lr, weight_decay=0.0, decay_mask=None, restore=False)`` (ZO-SGD),
      ``.pairs()`` ((param, z) per tensor, z materialised: for callers that need whole tensors),
      ``.params`` (the de-duplicated tensors), ``.run(fn)`` (a custom in-place update, block by
      block: ``fn(i, p_slice, z_slice, start, stop)``).
  ``ZOAdamW(names).step(noise, g, lr, weight_decay=0.0, decay_mask=None, restore=False)``,
      ``.retain(names)``, ``.state_dict()``, ``.load_state_dict()``.
  ``perturb``, ``zo_update`` (one-shot helpers), ``seed_generator``, ``draw_seed``, ``lr_factor``,
  ``noise_dtype``, ``block_seeds``, ``NOISE_KINDS``, ``BLOCK_ELEMS``.
``restore=True`` folds the restoration of a perturbed point into the update pass: each element runs
exactly the operations of ``restore()`` followed by ``update()``, so the result is bit-identical to
the two separate passes while z is generated once instead of twice.

The noise stream. A ZO step never stores its noise: z is a pure function of (seed, the tensors'
shapes and order, device type, kind), regenerated for every perturb, restore and update from
dedicated ``torch.Generator`` objects (never the global RNG, which would shift dropout masks and
data order). Every tensor is cut into consecutive blocks of ``BLOCK_ELEMS`` elements on CPU (one
block per tensor on other devices), numbered k = 0, 1, ... across the tensors in order, and block k
is drawn from a generator seeded with ``fmix32((low32(splitmix64(seed)) + k) mod 2**32)``: a
bijection of k, so blocks of one step never share a seed (torch's CPU generator keeps only the low
32 bits of a seed). Blocks are therefore independent of each other and of the order in which they
are generated: they can be drawn by parallel threads (``threads``), and a sharded tensor draws
only the blocks that overlap its own part. Gaussian blocks are ``normal_``; Rademacher blocks (+-1,
the classic SPSA direction) take one bit each from ``ceil(n/32)`` full-range int32 draws
(little-endian bytes, bit b of byte j -> element 8j+b). Only one block of noise per thread exists
at a time (a reused buffer), so the memory cost is a few MB whatever the model. This stream
replaced (2026-11) an earlier one that drew whole tensors in order from a single generator: same
distribution, different numbers.

Sharded tensors (FSDP, ``trainer.strategy=fsdp``). A DTensor parameter sharded on dim 0 is laid out
in blocks of its *full* flattened tensor (its global shape), exactly as an unsharded tensor; each
process perturbs and updates only its local rows, a contiguous range of the flattened tensor, drawing
every block that overlaps the range and keeping the overlap. So z restricted to a shard is the same
slice of the same full-tensor draw whatever the number of ranks: the noise does NOT depend on the
world size. On CPU the blocks are the unsharded ones, so an FSDP run draws the single-process
directions (tested: 2 FSDP ranks equal one process bit for bit). On accelerators a sharded tensor uses
blocks of ``SHARDED_BLOCK_ELEMS`` (instead of one block per tensor, which every rank would have to
draw whole): still independent of the world size, but not the unsharded GPU stream. The overlap costs
at most two partial blocks per tensor and process.

Precision. z is always drawn in fp32 (fp64 for fp64 tensors) whatever the parameter dtype, so a
bf16 and an fp32 run with the same seed see the same directions; ``p.add_(z, alpha=scale)``
computes in fp32 and rounds once to the parameter dtype. Perturb-then-restore by subtraction is
therefore not bit-exact: an element returns to its old value unless the rounding of the perturbed
value is big enough to move it (mostly when p and p+eps*z fall in different binades). Measured on
a 1000x1000 tensor of N(0, 0.02^2) weights, eps=1e-3, 10 MeZO cycles (+eps, -2eps, +eps):
fp32 drift rms 3.8e-10, max 6e-8 (negligible next to lr*g*z ~ 1e-6); bf16 drift rms 2.5e-4, max
3.4e-3, i.e. about one ulp per cycle, which swamps a ZO update. A Hi-ZFO cycle (+eps, -eps) drifts
6x less (bf16 rms 2.7e-5 per 10 cycles). Generating z in the parameter dtype gives the same drift.
``keep=True`` makes restoration bit-exact: it stores z (fp32) and a snapshot of the parameters
taken at the first perturbation, evaluates every perturbed point as ``snapshot + offset*z`` and
copies the snapshot back when the accumulated offset returns to zero. Cost: one parameter copy
plus fp32 noise for every tensor; use it for bf16 runs that can afford it and in tests.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from hizfo.training.distributed import local_shard

_SEED_HIGH = 2**62  # torch seeds are 64-bit; stay well inside int64 for torch.randint
_M32, _M64 = 2**32 - 1, 2**64 - 1
BLOCK_ELEMS = 1 << 18  # elements per independently seeded CPU block (1 MiB of fp32: stays in cache)
SHARDED_BLOCK_ELEMS = 1 << 22  # per block of a sharded (FSDP) tensor on an accelerator (16 MiB of fp32)
NOISE_KINDS = ("gaussian", "rademacher")

#: (tensor index, start, stop, block seed): one independently seeded slice of a flattened tensor
Block = tuple[int, int, int, int]
#: fn(tensor index, flat parameter slice, noise slice, start, stop), run once per block
BlockFn = Callable[[int, torch.Tensor, torch.Tensor, int, int], None]


def noise_dtype(param: torch.Tensor) -> torch.dtype:
    """fp32 noise for every float dtype except fp64 (see the module docstring)."""
    return torch.float64 if param.dtype == torch.float64 else torch.float32


def seed_generator(seed: int) -> torch.Generator:
    """Run-level CPU generator from which per-step seeds are drawn (save its state to resume)."""
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return gen


def draw_seed(generator: torch.Generator) -> int:
    """A fresh per-step seed from the run-level generator (never the global RNG)."""
    return int(torch.randint(0, _SEED_HIGH, (1,), generator=generator).item())


def lr_factor(step: int, total_steps: int, schedule: str | Callable[[int], float] = "constant") -> float:
    """The LR multiplier after ``step`` updates: 1 (constant) or 1 -> 0 linearly (linear).

    Same formula as ``hizfo.training.optim.linear_decay`` so ZO and FO rates decay together. A
    callable ``schedule(step)`` is the caller's own multiplier (``hizfo.api``'s schedule hook).
    """
    if callable(schedule):
        return float(schedule(step))
    if schedule == "constant":
        return 1.0
    if schedule != "linear":
        raise ValueError(f"unknown lr schedule {schedule!r}; use 'linear' or 'constant'")
    return max(0.0, 1.0 - step / max(1, int(total_steps)))


def check_noise_kind(kind: str) -> str:
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown ZO noise {kind!r}; use one of {', '.join(NOISE_KINDS)} "
                         f"(method.noise)")
    return kind


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _fmix32(h: int) -> int:
    """MurmurHash3's finaliser: a bijection of 32-bit integers that scrambles neighbours."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def block_seeds(seed: int, count: int) -> list[int]:
    """The generator seeds of blocks 0..count-1 of the step seeded ``seed`` (pairwise distinct)."""
    base = _splitmix64(int(seed) & _M64) & _M32
    return [_fmix32((base + k) & _M32) for k in range(count)]


def _unique(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Drop repeated tensors (a tied weight listed twice must be perturbed once)."""
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


_LOCAL = threading.local()  # per-thread generators and CPU scratch buffers (reused across steps)


def _generator(device: torch.device) -> torch.Generator:
    gens = _LOCAL.__dict__.setdefault("gens", {})
    gen = gens.get(device)
    if gen is None:
        gen = gens[device] = torch.Generator(device=device)
    return gen


def _scratch(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reused per-thread CPU buffer (a fresh tensor on accelerators, whose allocator caches)."""
    if device.type != "cpu":
        return torch.empty(numel, dtype=dtype, device=device)
    bufs = _LOCAL.__dict__.setdefault("scratch", {})
    buf = bufs.get(dtype)
    if buf is None or buf.numel() < numel:
        buf = bufs[dtype] = torch.empty(max(numel, BLOCK_ELEMS), dtype=dtype)
    return buf[:numel]


def _sign_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[256, 8]: row b holds +1/-1 for bits 0..7 of byte b (bit set -> +1)."""
    bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
    return (bits * 2 - 1).to(dtype=dtype, device=device)


_SIGNS: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def draw_block(numel: int, seed: int, kind: str, dtype: torch.dtype, device: torch.device
               ) -> torch.Tensor:
    """One block of noise, valid until this thread draws the next one (a view of a reused buffer)."""
    gen = _generator(device)
    gen.manual_seed(seed)
    if kind == "gaussian":
        return _scratch(numel, dtype, device).normal_(generator=gen)
    words = torch.empty((numel + 31) // 32, dtype=torch.int32, device=device)
    words.random_(-2**31, 2**31, generator=gen)  # full range: every bit uniform
    signs = _SIGNS.get((dtype, device))
    if signs is None:
        signs = _SIGNS[(dtype, device)] = _sign_table(dtype, device)
    out = _scratch(words.numel() * 32, dtype, device)
    torch.index_select(signs, 0, words.view(torch.uint8).long(), out=out.view(-1, 8))
    return out[:numel]


class ZONoise:
    """The direction z for one ZO step over an ordered list of tensors (see the module docstring).

    ``add(scale)`` moves the tensors by ``scale * z``; ``update(g, lr)`` applies the ZO-SGD step
    ``p -= lr * (g * z + wd * p)``. The accumulated offset is tracked, so ``update`` refuses to run
    while the tensors are still perturbed (unless told to ``restore`` in the same pass) and
    ``offset`` tells an error handler what to undo.
    """

    def __init__(self, params: Sequence[torch.Tensor], seed: int, keep: bool = False,
                 kind: str = "gaussian", threads: int = 1) -> None:
        self.params = _unique(list(params))
        # this process's part of each tensor and its offset in the flattened full tensor (None: not
        # sharded); see hizfo.training.distributed.local_shard
        shards = [local_shard(p) for p in self.params]
        self.locals = [t for t, _ in shards]
        self.offsets = [off for _, off in shards]
        self.seed = int(seed)
        self.keep = keep
        self.kind = check_noise_kind(kind)
        if int(threads) < 1:
            raise ValueError(f"ZONoise threads must be >= 1 (got {threads}); 1 = no extra threads")
        self.threads = int(threads)
        self.offset = 0.0
        self._max_scale = 0.0
        self._z: list[torch.Tensor] | None = None
        self._snapshot: list[torch.Tensor] | None = None
        self.blocks = self._layout()

    # ------------------------------------------------------------------ noise
    def _layout(self) -> list[Block]:
        """Blocks of the full tensors (a sharded tensor's global shape): the same on every rank."""
        spans = []
        for i, p in enumerate(self.params):
            n = p.numel()
            if p.device.type == "cpu":
                size = BLOCK_ELEMS
            else:  # one block per tensor, or 4M-element blocks of a sharded one (module docstring)
                size = SHARDED_BLOCK_ELEMS if self.offsets[i] is not None else max(n, 1)
            spans.extend((i, start, min(n, start + size)) for start in range(0, n, size))
        return [(i, a, b, s) for (i, a, b), s in zip(spans, block_seeds(self.seed, len(spans)))]

    def _local_blocks(self) -> list[tuple[Block, int, int]]:
        """(block, lo, hi) for each block overlapping this process's part: [lo, hi) in the block's
        tensor's local flat indices (the whole tensor when it is not sharded)."""
        out = []
        for block in self.blocks:
            i, a, b, _ = block
            off = self.offsets[i] or 0
            lo, hi = max(a, off), min(b, off + self.locals[i].numel())
            if lo < hi:
                out.append((block, lo - off, hi - off))
        return out

    def _draw(self, block: Block, lo: int, hi: int) -> torch.Tensor:
        """z on local elements [lo, hi) of the block's tensor (a slice of the whole block's draw)."""
        i, a, b, seed = block
        if self._z is not None:
            return self._z[i].view(-1)[lo:hi]
        p = self.locals[i]
        start = lo + (self.offsets[i] or 0) - a
        return draw_block(b - a, seed, self.kind, noise_dtype(p), p.device)[start:start + hi - lo]

    def _materialise(self) -> list[torch.Tensor]:
        zs = [torch.empty(p.shape, dtype=noise_dtype(p), device=p.device) for p in self.locals]
        for block, lo, hi in self._local_blocks():
            zs[block[0]].view(-1)[lo:hi].copy_(self._draw(block, lo, hi))
        return zs

    def pairs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(param, z) one tensor at a time, z materialised whole; the same z on every call.
        For a sharded tensor: (this process's part, z on that part)."""
        if self.keep:
            if self._z is None:
                self._z = self._materialise()
            yield from zip(self.locals, self._z)
            return
        local_blocks = self._local_blocks()
        for i, p in enumerate(self.locals):
            z = torch.empty(p.shape, dtype=noise_dtype(p), device=p.device)
            for block, lo, hi in local_blocks:
                if block[0] == i:
                    z.view(-1)[lo:hi].copy_(self._draw(block, lo, hi))
            yield p, z

    def run(self, fn: BlockFn) -> None:
        """Call ``fn(i, p_slice, z_slice, start, stop)`` once per block, in place on flat views of
        the parameters (their local parts when sharded; start, stop index those), under no_grad, on
        ``threads`` threads (blocks are independent)."""
        if self.keep and self._z is None:
            self._z = self._materialise()
        flats = [p.view(-1) if p.is_contiguous() else p.contiguous().view(-1) for p in self.locals]
        local_blocks = self._local_blocks()

        def task(item: tuple[Block, int, int]) -> None:
            block, lo, hi = item
            fn(block[0], flats[block[0]][lo:hi], self._draw(block, lo, hi), lo, hi)

        def threaded(item: tuple[Block, int, int]) -> None:
            with torch.no_grad():  # grad mode is thread-local
                task(item)

        with torch.no_grad():
            if self.threads > 1 and len(local_blocks) > 1:
                with ThreadPoolExecutor(self.threads) as pool:
                    list(pool.map(threaded, local_blocks))
            else:
                for item in local_blocks:
                    task(item)
            for p, flat in zip(self.locals, flats):
                if not p.is_contiguous():
                    p.copy_(flat.view(p.shape))

    # ------------------------------------------------------------------ perturb / restore
    def add(self, scale: float) -> None:
        """In place ``p += scale * z`` for every tensor (restore with the opposite scale)."""
        scale = float(scale)
        self._max_scale = max(self._max_scale, abs(scale))
        new_offset = self.offset + scale
        if abs(new_offset) <= 1e-12 * self._max_scale:
            new_offset = 0.0
        if not self.keep:
            self.run(lambda i, p, z, a, b: p.add_(z, alpha=scale))
        else:
            if self._snapshot is None:
                self._snapshot = [p.clone() for p in self.locals]
            base = [s.view(-1) for s in self._snapshot]

            def move(i: int, p: torch.Tensor, z: torch.Tensor, a: int, b: int) -> None:
                p.copy_(base[i][a:b] if new_offset == 0.0 else base[i][a:b].add(z, alpha=new_offset))

            self.run(move)
            if new_offset == 0.0:
                self._snapshot = None
        self.offset = new_offset

    def restore(self) -> None:
        """Undo the accumulated perturbation (used by error handlers)."""
        if self.offset != 0.0:
            self.add(-self.offset)

    def _restore_fn(self, restore: bool, what: str) -> Callable[[int, torch.Tensor, torch.Tensor, int, int],
                                                              None]:
        """The per-block restoration an update folds in (exactly what ``restore()`` does to it)."""
        if not restore or self.offset == 0.0:
            self._check_restored(what)
            return lambda i, p, z, a, b: None
        undo = -self.offset
        if self.keep:
            base = [s.view(-1) for s in self._snapshot or []]
            return lambda i, p, z, a, b: p.copy_(base[i][a:b])
        return lambda i, p, z, a, b: p.add_(z, alpha=undo)

    def _restored(self) -> None:
        self.offset = 0.0
        self._snapshot = None

    # ------------------------------------------------------------------ update
    def update(self, projected_grad: float, lr: float, weight_decay: float = 0.0,
               decay_mask: Sequence[bool] | None = None, restore: bool = False) -> None:
        """ZO-SGD: ``p -= lr * (projected_grad * z + weight_decay * p)``, decay where mask is True.

        ``restore=True`` first undoes the current perturbation in the same pass over z.
        """
        undo = self._restore_fn(restore, "update")
        mask = _mask(decay_mask, len(self.params))
        g, lr = float(projected_grad), float(lr)
        shrink = 1.0 - lr * float(weight_decay)

        def step(i: int, p: torch.Tensor, z: torch.Tensor, a: int, b: int) -> None:
            undo(i, p, z, a, b)
            if weight_decay and mask[i]:
                p.mul_(shrink)
            p.add_(z, alpha=-lr * g)

        self.run(step)
        self._restored()

    def _check_restored(self, what: str) -> None:
        if self.offset != 0.0:
            raise RuntimeError(f"ZONoise.{what} called while the tensors are still perturbed by "
                               f"{self.offset:g}*z; call add({-self.offset:g}) (restore) first, or "
                               f"pass restore=True to fold the restoration into the update")


def _mask(decay_mask: Sequence[bool] | None, n: int) -> list[bool]:
    if decay_mask is None:
        return [True] * n
    mask = list(decay_mask)
    if len(mask) != n:
        raise ValueError(f"decay_mask has {len(mask)} entries for {n} tensors; give one per tensor")
    return mask


def perturb(params: Sequence[torch.Tensor], seed: int, scale: float, kind: str = "gaussian") -> None:
    """In place ``p += scale * z(seed)``; call again with ``-scale`` to restore (up to rounding)."""
    ZONoise(params, seed, kind=kind).add(scale)


def zo_update(params: Sequence[torch.Tensor], seed: int, projected_grad: float, lr: float,
              weight_decay: float = 0.0, decay_mask: Sequence[bool] | None = None,
              kind: str = "gaussian") -> None:
    """ZO-SGD step with the regenerated z of ``seed``."""
    ZONoise(params, seed, kind=kind).update(projected_grad, lr, weight_decay, decay_mask)


class ZOAdamW:
    """AdamW fed the ZO estimate ``g*z`` one block at a time (no full-model gradient buffer).

    Matches ``torch.optim.AdamW`` given ``p.grad = g*z`` (decoupled decay, bias correction).
    Moments are fp32 and keyed by tensor name with a per-tensor step count (bias correction), so a
    re-partition keeps them for tensors that stay and starts fresh ones for tensors that join.
    """

    def __init__(self, names: Sequence[str], betas: Sequence[float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.names = list(names)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.steps: dict[str, int] = {}
        self.exp_avg: dict[str, torch.Tensor] = {}
        self.exp_avg_sq: dict[str, torch.Tensor] = {}

    def step(self, noise: ZONoise, projected_grad: float, lr: float, weight_decay: float = 0.0,
             decay_mask: Sequence[bool] | None = None, restore: bool = False) -> None:
        """One AdamW step with gradient ``g*z``; ``restore=True`` folds in undoing the perturbation."""
        if len(noise.params) != len(self.names):
            raise ValueError(f"ZOAdamW has {len(self.names)} tensors, the noise {len(noise.params)}")
        undo = noise._restore_fn(restore, "ZOAdamW.step")
        mask = _mask(decay_mask, len(self.names))
        b1, b2 = self.betas
        g, lr = float(projected_grad), float(lr)
        moments, factors = [], []
        for name, p in zip(self.names, noise.locals):  # a sharded tensor: moments of its local part
            if name not in self.exp_avg:
                self.exp_avg[name] = torch.zeros(p.shape, dtype=noise_dtype(p), device=p.device)
                self.exp_avg_sq[name] = torch.zeros_like(self.exp_avg[name])
            elif self.exp_avg[name].device != p.device:  # loaded from a checkpoint read onto the CPU
                self.exp_avg[name] = self.exp_avg[name].to(p.device)
                self.exp_avg_sq[name] = self.exp_avg_sq[name].to(p.device)
            t = self.steps[name] = self.steps.get(name, 0) + 1
            moments.append((self.exp_avg[name].view(-1), self.exp_avg_sq[name].view(-1)))
            factors.append((1.0 - b1 ** t, 1.0 - b2 ** t))

        def step(i: int, p: torch.Tensor, z: torch.Tensor, a: int, b: int) -> None:
            undo(i, p, z, a, b)
            grad = z.mul_(g) if not noise.keep else z * g
            m, v = moments[i][0][a:b], moments[i][1][a:b]
            bc1, bc2 = factors[i]
            m.lerp_(grad, 1.0 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
            if weight_decay and mask[i]:
                p.mul_(1.0 - lr * weight_decay)
            denom = (v.sqrt() / math.sqrt(bc2)).add_(self.eps)
            p.addcdiv_(m, denom, value=-lr / bc1)

        noise.run(step)
        noise._restored()

    def retain(self, names: Sequence[str]) -> None:
        """Keep moments only for ``names`` (the new ZO set after a re-partition)."""
        keep = set(names)
        self.names = list(names)
        for d in (self.exp_avg, self.exp_avg_sq, self.steps):
            for k in [k for k in d if k not in keep]:
                del d[k]

    def state_dict(self) -> dict[str, Any]:
        return {"steps": dict(self.steps), "exp_avg": dict(self.exp_avg),
                "exp_avg_sq": dict(self.exp_avg_sq), "betas": self.betas, "eps": self.eps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Moments stay where the checkpoint put them (usually the CPU); ``step`` moves each to its
        parameter's device on first use, as torch.optim's load_state_dict does at load."""
        self.steps = {k: int(v) for k, v in state["steps"].items()}
        self.exp_avg = dict(state["exp_avg"])
        self.exp_avg_sq = dict(state["exp_avg_sq"])
