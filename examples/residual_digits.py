"""A residual model on digits (not one of the seed's): the same flow as the tree example, with
each residual block (conv-BN-ReLU, conv-BN, + input) merged into one narrower conv.

    python examples/residual_digits.py --seed 0 --json residual.json
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import parse_args, run_example  # noqa: E402
from seed_models import residual  # noqa: E402


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    run_example(residual, args, prune_ratio=(0.625, 0.5, 0.375, 0.25), svd_energy=(0.9, 0.95, 0.97))


if __name__ == "__main__":
    main()
