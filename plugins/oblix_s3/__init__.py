"""The S3 session store (``session_store="s3"``, extra ``oblix[s3]``).

Without boto3 the plugin is skipped and ``oblix plugins`` shows it as not installed;
choosing ``--store s3`` then says which extra to install.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from oblix.plugin import hookimpl, needs

if TYPE_CHECKING:
    from oblix_s3.store import S3SessionStore

needs("boto3", install="pip install 'oblix[s3]'")

__all__ = ["make_store"]


def make_store(**options: Any) -> S3SessionStore:
    """Make an :class:`~oblix_s3.store.S3SessionStore` from store options."""
    from oblix_s3.store import S3SessionStore  # the library loads only when a store is made

    return S3SessionStore(**options)


@hookimpl
def oblix_register_session_stores(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("s3", make_store)
