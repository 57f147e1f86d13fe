"""The errors vaecodec reports to users: one line each, never a traceback."""


class VaecodecError(Exception):
    """Base class: the CLI prints str(error) on one line and exits non-zero."""

    exit_code = 1


class NotAVaeFileError(VaecodecError):
    """Input is not a .vae file at all (wrong magic, empty, another format)."""


class CorruptFileError(VaecodecError):
    """A .vae file whose bytes are damaged or truncated."""


class UnsupportedVersionError(VaecodecError):
    """A .vae file from a newer format version."""


class ModelMismatchError(VaecodecError):
    """A .vae file made with a different model than the one loaded."""


class ModelFileError(VaecodecError):
    """A model file that is missing, malformed or tampered with."""


class InputImageError(VaecodecError):
    """An input image that cannot be read or is out of the supported limits."""


class StoppedBySignal(VaecodecError):
    """Stopped by a signal after saving its state (exit status 130, like Ctrl-C)."""

    exit_code = 130
