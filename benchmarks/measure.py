"""Timing and memory measurement shared by every benchmark section.

Timing: variants run round-robin (one step of each, then the next round, with the starting variant
rotated every round) so load from other processes on a shared machine hits all variants alike;
the median over the timed rounds is reported.

Memory: on CUDA the allocator's peak is measured directly. On CPU there is no allocator peak to
read, so the peak of a training step is estimated as

    parameters + buffers + gradients of trainable parameters + optimizer state
    + bytes autograd keeps for backward (unique storages not already counted as parameters/buffers)

where the saved bytes come from ``torch.autograd.graph.saved_tensors_hooks``. It leaves out
short-lived temporaries and gradients in flight during backward, which are alike across variants
of the same model, so it ranks variants faithfully and is deterministic (unlike RSS deltas).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so a wall-clock reading covers the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class CaseTimes:
    """Seconds of each timed call: wall clock, and CPU time of the whole process (all threads).

    On a machine shared with other jobs the wall clock also counts time spent waiting for a core;
    CPU time does not, so it is the steadier of the two there (though spinning worker threads
    add some of their own), while wall clock is what a user waits for on an idle machine.
    """

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def wall_median(self) -> float:
        return median(self.wall)

    @property
    def cpu_median(self) -> float:
        return median(self.cpu)


def interleaved_timings(
    cases: Mapping[str, Callable[[], object]],
    *,
    warmup: int,
    steps: int,
    device: torch.device,
    fresh: bool = False,
    progress: str | None = None,
) -> dict[str, CaseTimes]:
    """Times of each case, measured round-robin; warm-up rounds are discarded.

    With ``fresh=True`` each case is a factory: it is called untimed and the callable it returns is
    timed (for work that needs new state every time, such as initialising an adapter on a fresh model).
    With ``progress`` set, a line naming it is printed to stderr after every round.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0 (got steps={steps}, warmup={warmup})")
    names = list(cases)
    times = {name: CaseTimes() for name in names}
    started = time.perf_counter()
    for round_index in range(warmup + steps):
        # Rotate the order so no case always runs right after the same neighbour.
        offset = round_index % len(names)
        for name in names[offset:] + names[:offset]:
            call = cases[name]() if fresh else cases[name]
            synchronize(device)
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            call()
            synchronize(device)
            wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
            if round_index >= warmup:
                times[name].wall.append(wall)
                times[name].cpu.append(cpu)
            del call
        if progress:
            kind = "warm-up" if round_index < warmup else "timed"
            print(
                f"[{progress}] round {round_index + 1}/{warmup + steps} ({kind}) done, {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    return times


def median(values: Iterable[float]) -> float:
    """Median of a non-empty sequence."""
    return statistics.median(list(values))


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return (str(tensor.device), tensor.untyped_storage().data_ptr())


def unique_storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and shared weights counted once)."""
    sizes: dict[tuple[str, int], int] = {}
    for tensor in tensors:
        if tensor.numel() == 0:
            continue
        sizes[_storage_key(tensor)] = tensor.untyped_storage().nbytes()
    return sum(sizes.values())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes of every tensor the optimizer keeps per parameter (AdamW: step, exp_avg, exp_avg_sq)."""
    if optimizer is None:
        return 0
    tensors = [value for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)]
    return unique_storage_bytes(tensors)


@dataclass(frozen=True)
class StepMemory:
    """Memory of one training step, in bytes; see the module docstring for the method."""

    weights: int
    gradients: int
    optimizer_state: int
    saved_for_backward: int
    measured_peak: int | None = None

    @property
    def estimated_peak(self) -> int:
        return self.weights + self.gradients + self.optimizer_state + self.saved_for_backward

    @property
    def peak(self) -> int:
        """The allocator's peak where one exists (CUDA), else the estimate."""
        return self.measured_peak if self.measured_peak is not None else self.estimated_peak


def measure_step_memory(
    step: Callable[[], object],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    device: torch.device,
) -> StepMemory:
    """Run ``step`` once (after warm-up, so the optimizer state exists) and account its memory."""
    static = list(model.parameters()) + list(model.buffers())
    static_keys = {_storage_key(t) for t in static if t.numel()}
    weights = unique_storage_bytes(static)
    gradients = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    saved: dict[tuple[str, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.numel():
            key = _storage_key(tensor)
            # Frozen weights saved for backward are already in `weights`; count only new storage.
            if key not in static_keys:
                saved[key] = tensor.untyped_storage().nbytes()
        return tensor

    measured_peak = None
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    state = optimizer_state_bytes(optimizer)
    if device.type == "cuda":
        synchronize(device)
        # Other variants' models share the GPU, so take this step's rise above its starting point
        # and add back only this variant's own resident weights and optimizer state.
        measured_peak = torch.cuda.max_memory_allocated(device) - before + weights + state
    return StepMemory(
        weights=weights,
        gradients=gradients,
        optimizer_state=state,
        saved_for_backward=sum(saved.values()),
        measured_peak=measured_peak,
    )
