"""The seed's "tree" (inception) model on digits: train, compress (merge each inception block
into one narrower ridge-fitted conv, one block at a time, distilling after each -> prune the
rest -> distil -> SVD on the Dense layers -> distil -> exact fusions), export int8 and compare
with the float original and with tfmot magnitude pruning.

    python examples/tree_digits.py --seed 0 --json tree.json --details tree_steps.json
    python examples/tree_digits.py --seed 3 --width 48 --blocks 3     # a variant
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import parse_args, run_example  # noqa: E402
from seed_models import tree  # noqa: E402


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    run_example(tree, args, prune_ratio=(0.625, 0.5, 0.375, 0.25), svd_energy=(0.9, 0.95, 0.97))


if __name__ == "__main__":
    main()
