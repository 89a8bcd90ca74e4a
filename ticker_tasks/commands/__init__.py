"""Sub-commands of ``ticker-tasks``, one module per area; each exposes ``register``."""
