"""LEDE gym: self-speculative decoding on a real Llama model as a Gymnasium RL problem.

Importing this package registers (idempotently) the environments:
  * ``LEDE-v0``: costs from the stored latency profile (deterministic rewards),
  * ``LEDE-WallClock-v0``: costs measured wall-clock (``nondeterministic=True``).
``gym.make("lede_env:LEDE-v0")`` works without an explicit import.
"""

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

ENV_ID = "LEDE-v0"
WALLCLOCK_ENV_ID = "LEDE-WallClock-v0"

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="lede_env.env:LEDEEnv", kwargs={"cost_model": "profile"})
if WALLCLOCK_ENV_ID not in registry:
    register(id=WALLCLOCK_ENV_ID, entry_point="lede_env.env:LEDEEnv", kwargs={"cost_model": "wallclock"},
             nondeterministic=True)

__all__ = ["ENV_ID", "WALLCLOCK_ENV_ID", "__version__"]
