"""Errors raised by rsretrieval.

Every message names the file or record at fault and says how to fix it. Each class also
subclasses the builtin a caller would expect, so ``except FileNotFoundError`` keeps working.
"""

from __future__ import annotations


class RSRetrievalError(Exception):
    """Base class of every error raised on purpose by this library."""


class DatasetNotFoundError(RSRetrievalError, FileNotFoundError):
    """A dataset's files are not where the reader looks for them."""


class DatasetFormatError(RSRetrievalError, ValueError):
    """An annotation file or image of a dataset is malformed."""


class ChecksumError(RSRetrievalError, ValueError):
    """A downloaded or supplied file does not have the expected checksum."""


class UnsafeArchiveError(RSRetrievalError, ValueError):
    """An archive member would be written outside the extraction folder."""


class ModelNotFoundError(RSRetrievalError, ValueError):
    """An unknown model name or pretrained tag."""


class CheckpointError(RSRetrievalError, ValueError):
    """A checkpoint does not fit the model it is loaded into."""


class StaleRunError(CheckpointError):
    """A run folder's ``last.pt`` was written by a run with other settings or other training data."""


class MethodNotFoundError(RSRetrievalError, ValueError):
    """An unknown method name, or a config class no method registered."""


class NoTargetMatchedError(RSRetrievalError, ValueError):
    """A method's target patterns matched no module: the method would silently do nothing."""


class UnsupportedModelError(RSRetrievalError, TypeError):
    """The model does not have the open_clip ``CLIP`` layout a method injects into."""


class DeviceNotAvailableError(RSRetrievalError, RuntimeError):
    """A device was asked for that torch cannot use on this machine."""


class SearchIndexError(RSRetrievalError, ValueError):
    """An index that is empty, damaged, or built with another model."""


class ZooIntegrityError(RSRetrievalError, ValueError):
    """A zoo.json that cannot be read, or an entry whose file or record contradicts what was built."""


class QueryImageError(RSRetrievalError, ValueError):
    """A query image that cannot be read, or would cost too much to; ``status`` is the HTTP answer (413, 415)."""

    def __init__(self, message: str, status: int = 415) -> None:
        super().__init__(message)
        self.status = status


class SynthRSExistsError(RSRetrievalError, FileExistsError):
    """The target folder already holds something other than the requested SynthRS dataset."""


class NotebookFormatError(RSRetrievalError, ValueError):
    """A notebook file that cannot be read or made into an edition; the message names the file."""


class NotebookFailed(RSRetrievalError, RuntimeError):
    """A notebook raised; the message names the notebook, the cell and the error."""


class ChildProcessFailed(RSRetrievalError, RuntimeError):
    """A measurement run in its own process failed; the message ends with that process's error."""


class DependencyNotFoundError(RSRetrievalError, ModuleNotFoundError):
    """An optional package is needed and not installed."""


def lazy_import(module: str, pip_name: str | None = None):
    """Import an optional dependency, or raise an error that says what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyNotFoundError(
            f"{module} is not installed. Run `pip install {pip_name or module}`."
        ) from exc
