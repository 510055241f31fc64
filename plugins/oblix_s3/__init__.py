"""The S3 session store (``session_store="s3"``, extra ``oblix[s3]``).

boto3 is imported only when a store is made, so Oblix loads without it; making an
``s3`` store without boto3 raises a :class:`~oblix_core.errors.ConfigError` that says
which extra to install.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from oblix_core import hookimpl
from oblix_core.errors import ConfigError

if TYPE_CHECKING:
    from oblix_s3.store import S3SessionStore

__all__ = ["make_store"]


def make_store(**options: Any) -> S3SessionStore:
    """Make an :class:`~oblix_s3.store.S3SessionStore` from store options."""
    try:
        import boto3  # noqa: F401

        from oblix_s3.store import S3SessionStore
    except ImportError as exc:
        raise ConfigError(
            f"The s3 session store needs boto3, which is not installed ({exc.name}): pip install 'oblix[s3]'."
        ) from None
    return S3SessionStore(**options)


@hookimpl
def oblix_register_session_stores(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("s3", make_store)
