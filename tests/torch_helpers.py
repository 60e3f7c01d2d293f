"""Helpers of the tests that compare minirl with torch (test_export, test_peft); import after
`pytest.importorskip("torch")`."""

import numpy as np
import torch


def t(x: np.ndarray) -> torch.Tensor:
    """A torch tensor sharing a contiguous copy's memory."""
    return torch.from_numpy(np.ascontiguousarray(x))


def max_abs(a, b) -> float:
    """Largest absolute difference of two arrays or tensors, in float64."""
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
