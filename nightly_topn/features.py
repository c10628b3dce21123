"""Read a features partition into the sparse matrices models and the top-N pipeline use."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp


@dataclass
class Features:
    directory: Path
    user_ids: np.ndarray
    item_ids: np.ndarray
    users: np.ndarray  # per interaction: user index
    items: np.ndarray
    confidence: np.ndarray
    split: np.ndarray

    @classmethod
    def load(cls, directory: str | Path) -> "Features":
        directory = Path(directory)
        inter = pq.read_table(directory / "interactions.parquet", columns=["user_index", "item_index", "confidence", "split"])
        return cls(
            directory=directory,
            user_ids=pq.read_table(directory / "user_map.parquet").column("user_id").to_numpy(zero_copy_only=False),
            item_ids=pq.read_table(directory / "item_map.parquet").column("item_id").to_numpy(zero_copy_only=False),
            users=inter.column("user_index").to_numpy(),
            items=inter.column("item_index").to_numpy(),
            confidence=inter.column("confidence").to_numpy(),
            split=pc.cast(inter.column("split"), "string").to_numpy(zero_copy_only=False),
        )

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.user_ids), len(self.item_ids)

    def matrix(self, *splits: str) -> sp.csr_matrix:
        """``users × items`` confidences of the rows in ``splits`` (all rows when none given)."""
        keep = np.isin(self.split, splits) if splits else np.ones(len(self.split), dtype=bool)
        return sp.csr_matrix(
            (self.confidence[keep].astype(np.float32), (self.users[keep], self.items[keep])), shape=self.shape
        )

    def fingerprint(self) -> str:
        """Content hash of the prepared data (identifies what a model was trained on)."""
        digest = hashlib.sha256()
        for name in ("interactions.parquet", "user_map.parquet", "item_map.parquet"):
            digest.update((self.directory / name).read_bytes())
        return digest.hexdigest()[:16]
