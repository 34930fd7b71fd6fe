"""The error every config problem raises; its message says what to change."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config that cannot be used; the message says what to change."""
