"""Fixed-capacity numpy ring buffers for the live plots (Qt-free).

Appends are O(1); `view()` returns the rows in time order as one contiguous array (a copy of at most
`capacity` rows), which is what the fixed-rate redraw hands to `setData`. Memory never grows past
`capacity × width` floats, however long the app runs.
"""

from __future__ import annotations

import numpy as np


class RingBuffer:
    """`capacity` rows of `width` float64 columns; the oldest rows are overwritten when full."""

    def __init__(self, capacity: int, width: int):
        if capacity <= 0 or width <= 0:
            raise ValueError(f"capacity and width must be positive, got {capacity} and {width}")
        self._data = np.full((capacity, width), np.nan, dtype=np.float64)
        self._next = 0
        self._size = 0
        self.version = 0  # bumps on every change, so a redraw can skip unchanged buffers

    @property
    def capacity(self) -> int:
        return self._data.shape[0]

    @property
    def width(self) -> int:
        return self._data.shape[1]

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        return int(self._data.nbytes)

    def append(self, row: np.ndarray | list[float]) -> None:
        """Add one row (length `width`)."""
        self._data[self._next] = row
        self._next = (self._next + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)
        self.version += 1

    def extend(self, rows: np.ndarray) -> None:
        """Add many rows at once (shape (n, width)); only the last `capacity` are kept."""
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, self.width)
        if len(rows) >= self.capacity:
            self._data[:] = rows[-self.capacity :]
            self._next = 0
            self._size = self.capacity
        else:
            end = self._next + len(rows)
            if end <= self.capacity:
                self._data[self._next : end] = rows
            else:
                split = self.capacity - self._next
                self._data[self._next :] = rows[:split]
                self._data[: end - self.capacity] = rows[split:]
            self._next = end % self.capacity
            self._size = min(self._size + len(rows), self.capacity)
        self.version += 1

    def merge(self, rows: np.ndarray) -> None:
        """Add rows that may be older than the stored ones, keeping every row in ascending order of
        column 0 (the window start); a row whose column 0 is already stored replaces it. The plots need
        that order (pyqtgraph clips and downsamples by position): history read while live windows
        arrive, or a window that arrives late, would otherwise be drawn as lines back and forth."""
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, self.width)
        if not len(rows):
            return
        combined = np.vstack([self.view(), rows]) if self._size else rows
        _, first = np.unique(combined[::-1, 0], return_index=True)  # the newest given row wins a tie
        ordered = combined[::-1][first]  # ascending column 0, one row per key
        self.clear()
        self.extend(ordered)

    def view(self) -> np.ndarray:
        """The stored rows, oldest first (a copy)."""
        if self._size < self.capacity:
            return self._data[: self._size].copy()
        return np.concatenate((self._data[self._next :], self._data[: self._next]))

    def assign_column(self, column: int, values: np.ndarray) -> None:
        """Overwrite one column for every stored row; `values` in `view()` order (oldest first)."""
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(values) != self._size:
            raise ValueError(f"{len(values)} values for {self._size} rows")
        if self._size < self.capacity:
            self._data[: self._size, column] = values
        else:
            order = (self._next + np.arange(self.capacity)) % self.capacity
            self._data[order, column] = values
        self.version += 1

    def assign_by_key(self, keys: np.ndarray, column: int, values: np.ndarray) -> int:
        """Set `column` of the rows whose column 0 equals one of `keys` (rows and keys in ascending order
        of column 0, as time-ordered rows are); keys with no row are ignored. Returns the rows set."""
        keys = np.asarray(keys, dtype=np.float64).reshape(-1)
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if not self._size or not len(keys):
            return 0
        order = (self._next - self._size + np.arange(self._size)) % self.capacity  # oldest first
        stored = self._data[order, 0]
        at = np.searchsorted(stored, keys).clip(0, self._size - 1)
        found = stored[at] == keys
        if not found.any():
            return 0
        self._data[order[at[found]], column] = values[found]
        self.version += 1
        return int(found.sum())

    def first_key(self) -> float | None:
        """Column 0 of the oldest row (no copy of the buffer), or None when empty."""
        if self._size == 0:
            return None
        return float(self._data[(self._next - self._size) % self.capacity, 0])

    def last(self) -> np.ndarray | None:
        """The newest row, or None when empty."""
        if self._size == 0:
            return None
        return self._data[(self._next - 1) % self.capacity].copy()

    def clear(self) -> None:
        """Forget every row."""
        self._data[:] = np.nan
        self._next = 0
        self._size = 0
        self.version += 1
        self.version += 1
