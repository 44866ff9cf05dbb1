"""The flows room: data sets (the bundled digits), distillation, and the compression flow that
strings approximate rules, retraining and the exact pass together. Imports every room below
(ir, keras_io, rewriting, the rules, runtime); only kopt.api and kopt.cli import it.
"""
