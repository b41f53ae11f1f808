"""Backends behind `LEDEEnv`: `live` (the real model decodes) and `replay` (recorded traces, no model).
Both return `BackendStep`; the environment turns it into an observation and a reward."""

from lede_env.backends.base import BackendReset, BackendStep

__all__ = ["BackendReset", "BackendStep"]
