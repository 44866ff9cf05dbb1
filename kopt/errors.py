"""Exceptions kopt raises. Every message names the layer (when there is one) and what to do."""


class KoptError(Exception):
    """Base class: catch this to handle anything kopt refuses to do."""


class UnsupportedModelError(KoptError):
    """The model cannot be lifted into the IR (subclassed, unbuilt, unreadable file)."""


class EmitError(KoptError):
    """The IR cannot be turned back into a Keras model for the requested backend."""


class GraphLintError(KoptError):
    """The IR broke an invariant (a rule bug); the rule that caused it is rolled back."""


class VerificationError(KoptError):
    """A rewritten model no longer computes what the original did."""


class DataError(KoptError):
    """Calibration / representative data is missing, empty or has the wrong shape."""


class UnsafeModelError(UnsupportedModelError):
    """Loading the model file could run code stored in it (a Lambda's bytecode, a layer class
    kopt cannot vouch for); load files you trust with safe_mode=False (CLI: --unsafe)."""
