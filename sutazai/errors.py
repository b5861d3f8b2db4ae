"""Errors a user can cause and fix.

Every message says what went wrong *and* what to do about it; the CLI prints the message
without a traceback and exits non-zero. Bugs stay ordinary exceptions, so they keep
their traceback.
"""


class SutazAIError(Exception):
    """Base class for problems the user can act on."""

    exit_code = 1


class ConfigError(SutazAIError):
    """A setting or settings file is invalid."""


class CatalogError(SutazAIError):
    """An entry of the model catalog is invalid; the message names the entry and field."""


class SourceError(SutazAIError):
    """A model source is unknown, unreachable, or answered something unusable."""


class IntegrityError(SutazAIError):
    """Bytes did not match their expected size or sha256 digest."""


class DiskFullError(SutazAIError):
    """A folder has too little free space for what must be written there."""


class UnsafeFormatError(SutazAIError):
    """A file could execute code when loaded (pickle) and the catalog did not allow it."""


class NotFoundError(SutazAIError):
    """A model, version or file does not exist in the repository."""


class InUseError(SutazAIError):
    """An operation would remove something that is still referenced (an alias)."""


class BundleError(SutazAIError):
    """An air-gapped bundle is malformed, unsafe, or does not match its checksums."""


class RegistryError(SutazAIError):
    """The MLflow tracking or registry server refused or could not be reached."""


class EngineError(SutazAIError):
    """A serving engine could not start, died, or cannot serve the model's format."""


class PortInUseError(SutazAIError):
    """The port asked for is already taken by another process."""


class BenchmarkError(SutazAIError):
    """A benchmark could not run or its endpoint failed while it ran."""


class ConversionError(SutazAIError):
    """A model version cannot be converted to the format asked for."""


class GraphStoreError(SutazAIError):
    """The knowledge-graph store could not start, be reached, or refused a statement."""


class DocumentError(SutazAIError):
    """A document cannot be read as text (binary, empty, too large, unknown encoding)."""


class ExtractionError(SutazAIError):
    """Entity or relation extraction is misconfigured or its model endpoint is unreachable."""


class DataGateError(SutazAIError):
    """A dataset failed its quality gate; nothing was trained on it."""


class TrainingError(SutazAIError):
    """Architecture search or fine-tuning cannot run as asked (bad space, data or model)."""


class OptimizationError(SutazAIError):
    """A model version cannot be optimised (quantised) the way asked."""


class DataError(SutazAIError):
    """A data file, row or rating cannot go into the store (the message says which and why)."""


class AuditError(SutazAIError):
    """The audit log or its anchor cannot be written or read."""


class AuditChainError(AuditError):
    """The audit log no longer matches its chain, head or anchor (records edited, cut off
    or emptied away): nothing is appended to it until an admin has investigated."""
