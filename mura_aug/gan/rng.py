"""The random numbers of training: keyed draws, and the global generators' states that a snapshot keeps.

Draws are keyed, not streamed: the latents of an iteration come from a generator seeded by (seed, iteration),
and before each chunk of a phase torch's global generators are seeded by (seed, iteration, phase, chunk number
within the whole batch). So what a chunk computes does not depend on which process computes it or on what was
drawn before it (metrics, the fakes grid), which is what makes multi-GPU training equal one-GPU training and
a resumed run equal the uninterrupted one.

The global states (torch, CUDA, numpy, Python) are still saved in every state and restored on resume, so that
anything else that draws from them continues as it would have.
"""
from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import torch

# What a derived seed is for (part of its key).
DRAW_LATENTS = 0  # the latents and classes of one iteration
DRAW_CHUNK = 1  # torch's global generators before one chunk of one phase


def derived_seed(seed: int, *key: int) -> int:
    """A well-mixed 63-bit seed for the draws named by `key` (iteration, purpose, phase, chunk): a draw depends
    on what it is for, not on which process makes it or on what was drawn before it."""
    sequence = np.random.SeedSequence(int(seed) % (1 << 64), spawn_key=tuple(int(k) for k in key))
    return int(sequence.generate_state(1, np.uint64)[0]) & ((1 << 63) - 1)


def seed_chunk(seed: int, iteration: int, phase: int, chunk: int) -> None:
    """Seed torch's global generators (CPU and CUDA) for one chunk of one phase of one iteration."""
    value = derived_seed(seed, iteration, DRAW_CHUNK, phase, chunk)
    # Not torch.manual_seed: before CUDA starts, that queues the CUDA seeding together with a formatted stack
    # trace of the caller, ~1 ms per call, twice or more per training step of a CPU run (a CUDA build of
    # torch, as pip installs, on a machine without a GPU). A CUDA run has started CUDA before its first
    # chunk, so its generators are seeded here all the same.
    torch.default_generator.manual_seed(value)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(value)


def draw_latents(seed: int, iteration: int, num_phases: int, batch_size: int, z_dim: int, c_dim: int, labels):
    """Latents [phases, batch, z_dim] and one-hot labels [phases, batch, c_dim] of one iteration, for the whole
    batch (each rank takes its slice), on the CPU. Conditional runs draw classes in the training set's mix
    (`labels`: the class index of every training image)."""
    generator = torch.Generator().manual_seed(derived_seed(seed, iteration, DRAW_LATENTS))
    gen_z = torch.randn([num_phases, batch_size, z_dim], generator=generator)
    gen_c = torch.zeros([num_phases, batch_size, c_dim])
    if c_dim > 0:
        pick = torch.randint(len(labels), (num_phases * batch_size,), generator=generator)
        classes = torch.from_numpy(np.asarray(labels)[pick.numpy()]).long()
        gen_c.view(-1, c_dim)[torch.arange(len(classes)), classes] = 1
    return gen_z, gen_c


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (a new run's initial weights come from torch's)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def global_state() -> Dict[str, Any]:
    """The global generators' states as tensors and plain values (a state file loads with weights_only)."""
    numpy_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), int(numpy_state[2]),
                       int(numpy_state[3]), float(numpy_state[4])]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_state(state: Dict[str, Any]) -> None:
    """Restore what `global_state` saved. CUDA states are restored when as many GPUs are visible as then."""
    torch.set_rng_state(state["torch"])
    version, *rest = state["python"]
    random.setstate((version, tuple(rest[0]), rest[1]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
