"""URL converters that refuse malformed ids before any query sees them (a 404, never a 500)."""

from __future__ import annotations


class PublicIdConverter:
    """Agent, session and run ids: letters, digits and -_.: up to 64 characters."""

    regex = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"

    def to_python(self, value: str) -> str:
        """The id as given."""
        return value

    def to_url(self, value: str) -> str:
        """The id as given."""
        return value


class PkConverter:
    """Database ids: positive integers that fit a bigint."""

    regex = r"[1-9][0-9]{0,17}"

    def to_python(self, value: str) -> int:
        """The id as an int."""
        return int(value)

    def to_url(self, value: int) -> str:
        """The id as text."""
        return str(value)
