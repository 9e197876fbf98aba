"""The torch reference backend of the retrieval search: exact float32 matmul + ``topk``.

:class:`wfa.eval.metrics.Searcher` uses it for ``backend="torch"``; tests check that it gives the same
metrics as FAISS. TF32 is switched off for the matmul, so that the float32 error bound of
:func:`wfa.eval.metrics.score_margin` holds on GPUs too.
"""
from __future__ import annotations

import numpy as np
import torch


class TorchTopK:
    """Top-k inner products of query batches against one gallery held on ``device`` (default: cuda if any)."""

    def __init__(self, gallery: np.ndarray, device: str | None = None):
        """``gallery`` ``[M, D]`` float32 (unit-norm rows)."""
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.gpu = self.device.type == "cuda"
        self.gallery = torch.from_numpy(gallery).to(self.device)

    def search(self, batch: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores ``[B, k]`` descending, indices ``[B, k]``) of the top ``k`` gallery items of each query."""
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            with torch.no_grad():
                sims = torch.from_numpy(batch).to(self.device) @ self.gallery.T
                s, i = sims.topk(k, dim=1)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        return s.cpu().numpy(), i.cpu().numpy()
