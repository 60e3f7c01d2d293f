"""Model merging: offline (mergekit's linear, DARE, TIES; `minirl merge`) and online merging optimizers.

    offline.py   task vectors; linear, dare_linear, ties, dare_ties exactly as mergekit; streamed `merge`
    online.py    OnDARE, OnTIES (step-K too), and the EMA and ChildTuning baselines, as minirl optimizers
"""

from .offline import (DEFAULT_NORMALIZE, METHODS, dare_drop, magnitude_trim, merge, merge_tensors, sign_consensus,
                      task_vector, tensor_rng)
from .online import EMA, ChildTuning, OnDARE, OnTIES

__all__ = ["DEFAULT_NORMALIZE", "METHODS", "dare_drop", "magnitude_trim", "merge", "merge_tensors", "sign_consensus",
           "task_vector", "tensor_rng", "EMA", "ChildTuning", "OnDARE", "OnTIES"]
