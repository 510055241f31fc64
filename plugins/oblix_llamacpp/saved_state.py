"""What the prompt-state cache keeps: an evaluated prompt's tokens and llama.cpp's state after them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:  # numpy is imported when a prompt is prepared, not with the plugin: every
    # `oblix` command loads the plugin, and numpy would add ~65 ms to each
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
