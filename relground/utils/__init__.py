"""Small helpers with no relground dependency: atomic file writes, device / seed / thread settings."""

from relground.utils.env import intra_op_threads, resolve_amp_dtype, resolve_device, seed_all
from relground.utils.io import atomic_torch_save, atomic_write

__all__ = ["atomic_torch_save", "atomic_write", "intra_op_threads", "resolve_amp_dtype", "resolve_device", "seed_all"]
