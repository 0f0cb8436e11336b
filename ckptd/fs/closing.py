"""One way for ckptd's own resources to be used in a ``with`` block: leaving it closes them."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class ClosesOnExit:
    """A mixin: ``with resource:`` gives the resource itself and calls its ``close()`` on leaving,
    whatever happened (the class defines ``close``; it must be safe to call twice)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
