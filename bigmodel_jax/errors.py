"""Exceptions the library raises for problems a user can fix."""


class ConfigError(ValueError):
  """A configuration value cannot work; the message names the key and what is accepted."""


class DataError(RuntimeError):
  """Input data is missing or malformed; the message says what to do."""


class CheckpointMismatchError(RuntimeError):
  """A workdir holds a checkpoint that does not fit the configured model or optimizer."""


class CheckpointDamagedError(RuntimeError):
  """No checkpoint of a folder is intact (checksums or reading failed); the message names them."""


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss."""
