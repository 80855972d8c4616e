"""The peak of live tensor memory during a block of torch code, counted as CUDA counts a GPU's, on any device.

``torch.cuda.max_memory_allocated`` counts tensors only: not the Python and torch runtime, not what an allocator
keeps after frees. A CPU has no such counter (a process's resident peak counts all of it), so :class:`TensorCount`
keeps one: it sees every operator's result (a ``TorchDispatchMode``), adds each new storage's bytes when it appears
and takes them away when the storage is freed, and reports the highest total and what the memory held at that
moment, by kind. Tensors that would live in host memory beside a GPU (an optimiser's state kept there) can be left
out of the count, so that a CPU run shows what a GPU would hold.

    count = TensorCount(kinds={"weights": lambda: params}, host=lambda: host_tensors)
    with count:
        step()
    count.peak_bytes, count.at_peak    # {"weights": ..., "other": ...}

A sharded tensor (a ``DTensor``, as FSDP holds its weights) counts as this process's part of it; a storage that FSDP
empties and fills again (``resize_``, which no operator sees) counts as the bytes it holds at each moment.

Not counted: memory a kernel takes for itself without a tensor (a GPU's convolution workspace), and the rounding a
GPU's allocator adds to each block (512 bytes).
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections.abc import Callable, Iterable

import torch
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# the breakdown is taken again whenever the peak has grown by this much since it was last taken, so the one reported
# is within this of the peak (taking it at every new peak would slow the step for nothing)
BREAKDOWN_EVERY = 2**20


class TensorCount(TorchDispatchMode):
    """Counts the bytes of the live tensor storages on ``device`` while it is entered; see the module's text.

    ``kinds``: name -> a function giving the tensors of that kind (called when the breakdown is taken, so that
    gradients made during the block are found); what no kind names is "other" (activations, temporaries, inputs).
    ``host``: a function giving the tensors that stand for host memory; what is made inside :meth:`host_side` is
    host memory too."""

    def __init__(self, device: str | torch.device = "cpu",
                 kinds: dict[str, Callable[[], Iterable[torch.Tensor]]] | None = None,
                 host: Callable[[], Iterable[torch.Tensor]] = tuple):
        super().__init__()
        self.device = torch.device(device).type
        self.kinds = kinds or {}
        self.host_tensors = host
        self.live: dict[int, tuple[int, weakref.ref]] = {}  # storage -> (bytes, a reference that frees the entry)
        self.host_storages: dict[int, weakref.ref] = {}
        self.total = self.start_bytes = self.peak_bytes = 0
        self.at_peak: dict[str, int] = {}
        self._breakdown_at = 0
        self._host_side = False

    def __enter__(self):
        gc.collect()
        for tensor in self.host_tensors():
            self._remember_host(_local(tensor).untyped_storage())
        held = [t for kind in self.kinds.values() for t in kind() if t is not None]  # (gradients: not in gc's view)
        for tensor in held + _live_tensors():  # what is held when the count starts
            self._add(tensor)
        self.start_bytes = self.peak_bytes = self.total
        self._breakdown()
        resize = torch.UntypedStorage.resize_

        def counted_resize(storage, size):  # (FSDP frees and refills a gathered weight's storage so)
            out = resize(storage, size)
            self._add_storage(storage)
            return out

        self._own_resize = torch.UntypedStorage.__dict__.get("resize_")  # (none: torch's base class has it)
        torch.UntypedStorage.resize_ = counted_resize
        return super().__enter__()

    def __exit__(self, *exc):
        if self._own_resize is None:
            del torch.UntypedStorage.resize_
        else:
            torch.UntypedStorage.resize_ = self._own_resize
        self.live, self.host_storages = {}, {}  # (a dropped reference calls nothing back)
        return super().__exit__(*exc)

    @contextlib.contextmanager
    def host_side(self):
        """What is made inside is host memory (an optimiser stepping its host copies), left out of the count; what
        is known as the device's stays counted."""
        self._host_side, before = True, self._host_side
        try:
            yield
        finally:
            self._host_side = before

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._add(tensor)
        return out

    # ----- the count

    def _add(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == self.device:
            self._add_storage(_local(tensor).untyped_storage())

    def _add_storage(self, storage: torch.UntypedStorage) -> None:
        if storage.device.type != self.device:
            return
        key = storage._cdata
        if self._host_side and key not in self.live:  # (a device tensor handed through stays the device's)
            self._remember_host(storage)
        if key in self.host_storages:
            return
        size = storage.nbytes()
        if key in self.live:  # known; it may have been resized
            known, ref = self.live[key]
            if known == size:
                return
            self.live[key] = (size, ref)
            self.total += size - known
        else:
            self.live[key] = (size, weakref.ref(storage, lambda _, key=key: self._free(key)))
            self.total += size
        if self.total > self.peak_bytes:
            self.peak_bytes = self.total
            if self.peak_bytes - self._breakdown_at >= BREAKDOWN_EVERY:
                self._breakdown()

    def _free(self, key: int) -> None:
        entry = self.live.pop(key, None)
        if entry is not None:
            self.total -= entry[0]

    def _remember_host(self, storage: torch.UntypedStorage) -> None:
        key = storage._cdata
        if key not in self.host_storages:
            self.host_storages[key] = weakref.ref(storage, lambda _, key=key: self.host_storages.pop(key, None))

    def _breakdown(self) -> None:
        """What the live storages are, by kind (each storage counted once, under the first kind that names it)."""
        kind_of = {}
        for kind, tensors in self.kinds.items():
            for tensor in tensors():
                if tensor is not None:
                    kind_of.setdefault(_local(tensor).untyped_storage()._cdata, kind)
        sums = dict.fromkeys([*self.kinds, "other"], 0)
        for key, (size, _) in self.live.items():
            sums[kind_of.get(key, "other")] += size
        self.at_peak, self._breakdown_at = sums, self.total


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a sharded tensor (the tensor itself when it is not sharded). Not
    ``wadi_core.distill.sharding.local``: its ``to_local()`` runs an operator, which the count would see inside its own
    bookkeeping; the attribute runs none."""
    return tensor._local_tensor if isinstance(tensor, DTensor) else tensor


def _live_tensors() -> list[torch.Tensor]:
    """Every tensor that Python holds now (the garbage collector's view)."""
    return [obj for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor)]  # (type: no lazy attributes)
