"""The rules, one module each. Importing this package imports every module in it, and each
rule registers itself (`@kopt.rewriting.register(exact=..., after=...)`), so a new rule is one
new file here (plus its test) and nothing else edited.

The default order comes from the rules' constraints (kopt.rewriting.registry):
remove_identity -> fold_batchnorm -> fold_rescaling -> merge_branches, pool_to_conv ->
fuse_vertical -> fuse_horizontal for the exact rules. Identities go first (they hide
BN/activation pairs), BN folding comes before activation fusion (conv-BN-ReLU must fold the
BN before the ReLU can join the conv), and horizontal fusion comes last, once parallel convs
carry their activations.
Approximate rules need calibration data (constructor arguments) and retraining afterwards; the
flows in kopt.flows choose their settings. Modules whose names start with "_" hold helpers
shared by several rules.
"""

import importlib
import pkgutil

from kopt.rewriting import Rule, registered

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")


def exact_rules() -> list[Rule]:
    """Fresh instances of the exact rules kopt.optimize runs by default, in their order."""
    return [cls() for cls in EXACT]


EXACT = registered(exact=True, default_only=True)
APPROXIMATE = registered(exact=False)

ALL = registered()
globals().update({cls.__name__: cls for cls in ALL})
__all__ = ["ALL", "APPROXIMATE", "EXACT", "exact_rules"] + sorted(c.__name__ for c in ALL)
