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


class StaleBatchNormWarning(UserWarning):
    """BatchNormalization moving statistics disagree with the data: inference mode and training
    mode give different outputs, so scores measured in inference mode are broken. Fix with
    kopt.recalibrate_bn(model, data), or optimize(..., recalibrate_bn=True)."""


class RuntimeChoiceError(KoptError):
    """An unknown runtime name or a thread count below 1 was asked for timing or a latency
    model; the message lists the runtimes kopt can time."""


class LatencyTableError(KoptError):
    """A latency table cannot answer: a device-measured table lacks a part of the model (write
    a bundle for that model and time it on the device), or a file is not a latency table."""


class ChannelSweepError(KoptError):
    """A channel-count sweep was asked for a node whose output width is not free (not a Conv
    with groups=1 or a Dense, or unknown), or for widths outside 1..its channel count."""


class SearchTargetError(KoptError):
    """A latency target that cannot be searched for: give exactly one of a speed-up (> 1, over
    int8 PTQ of the original) or a latency in ms (> 0)."""


class TargetNotReachedWarning(UserWarning):
    """optimize(..., target=...) found no model within the allowed drop that meets the latency
    target; the message says what was reached (Optimizer.search has every step)."""


class ExportError(KoptError):
    """A model cannot be written in the format asked for: a layer the converter cannot take in
    that mode (the message names the layer, the reason and what to do instead)."""
