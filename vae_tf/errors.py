"""Errors a user can cause.

Every class here carries a one-line message that says what was wrong and what to do. The CLI
prints ``error: <message>`` and exits 2 for these; anything else is a bug and keeps its traceback.
"""


class VaeTfError(Exception):
    """Base class of user-facing errors (bad config, bad data, missing model)."""

    def __init__(self, message: str):
        # One line, always: a multi-line message would be cut by log collectors and MLflow tags.
        super().__init__(" ".join(str(message).split()))


class ConfigError(VaeTfError, ValueError):
    """A configuration value, key or combination that cannot work."""


class DataError(VaeTfError, ValueError):
    """A data set that cannot be trained on as given (shape, values, emptiness, availability)."""


class ModelNotFoundError(VaeTfError, FileNotFoundError):
    """An export directory, model version or checkpoint that does not exist."""


class TrainingDivergedError(VaeTfError, ArithmeticError):
    """The loss became NaN or infinite: training stopped at the last good checkpoint."""


def tensorflow_root_error(err: BaseException, limit: int = 300) -> str:
    """The line of a TensorFlow error that names its cause. A graph error opens with "Graph
    execution error:", "Detected at node ..." and stack lines, then gives either numbered root
    errors ("(0) INTERNAL: ...": the first is taken) or one cause line; cut to ``limit`` characters."""
    lines = [line.strip() for line in str(getattr(err, "message", None) or err).splitlines() if line.strip()]
    numbered = [line for line in lines if line.startswith("(0)")]
    noise = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "File \"", "The op is created")
    causes = [line for line in lines if not line.startswith(noise)]
    return (numbered or causes or lines or [""])[0][:limit]
