"""minirl: a pure-NumPy laboratory for RL fine-tuning of language models."""

import os as _os
import sys as _sys

# minirl's matrices are small: one BLAS thread is faster than several fighting
# over two cores (13x faster under load, measured). Set MINIRL_THREADS to
# change it; this only takes effect if NumPy was not imported before minirl.
_numpy_first = "numpy" in _sys.modules and "OPENBLAS_NUM_THREADS" not in _os.environ
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, _os.environ.get("MINIRL_THREADS", "1"))
if _numpy_first:
    import warnings as _warnings

    _warnings.warn("NumPy was imported before minirl, so BLAS keeps its default thread count, which is much "
                   "slower for minirl's small matrices on a busy machine: import minirl first, or set "
                   "OPENBLAS_NUM_THREADS=1", stacklevel=2)

__version__ = "0.1.0"


def load(name_or_path, value_head=None, reward_head=None, merge_lora=False):
    """A shipped model ("base", "sft", "sft-w32", ...: minirl.loading.SHIPPED), a checkpoint or a run directory;
    heads added or dropped, LoRA merged."""
    from minirl.loading import load as _load

    return _load(name_or_path, value_head=value_head, reward_head=reward_head, merge_lora=merge_lora)
