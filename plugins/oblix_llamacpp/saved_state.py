"""What the prompt-state cache keeps: an evaluated prompt's tokens and llama.cpp's state after them."""

from __future__ import annotations

import attrs
import numpy as np
import numpy.typing as npt

Tokens = npt.NDArray[np.intc]


@attrs.frozen
class SavedState:
    """An evaluated prompt: its tokens and llama.cpp's sequence state after them."""

    tokens: Tokens
    data: bytearray

    @property
    def nbytes(self) -> int:
        return len(self.data) + self.tokens.nbytes
