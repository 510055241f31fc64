"""What the S3 store checks: index entries a listing can use, and its options."""

from __future__ import annotations

from oblix.plugin import ConfigError

SUMMARY = ("title", "created_at", "updated_at", "message_count", "metadata")


#: Seconds after which a pending create whose manifest never appeared is dropped.
PENDING_GRACE = 3600.0


def well_formed_entry(entry: object) -> bool:
    """Whether an index entry has what a listing needs, with the right types (else skipped)."""
    return (
        isinstance(entry, dict)
        and all(k in entry for k in (*SUMMARY, "ts"))
        and (entry["title"] is None or isinstance(entry["title"], str))
        and isinstance(entry["created_at"], str)
        and isinstance(entry["updated_at"], str)
        and isinstance(entry["message_count"], int)
        and not isinstance(entry["message_count"], bool)
        and isinstance(entry["metadata"], dict)
        and isinstance(entry["ts"], int | float)
        and not isinstance(entry["ts"], bool)
    )


def int_option(name: str, value: object, minimum: int) -> int:
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        number = minimum - 1
    if number < minimum or isinstance(value, bool):
        raise ConfigError(f"The s3 store option {name!r} must be an integer >= {minimum}, got {value!r}.")
    return number


def key_prefix(value: object) -> str:
    if not isinstance(value, str) or ".." in value.split("/"):
        raise ConfigError(f"The s3 store option 'prefix' must be a key prefix like 'oblix/', got {value!r}.")
    value = value.lstrip("/")
    return value if not value or value.endswith("/") else value + "/"
