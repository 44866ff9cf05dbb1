"""The seed's "dense" (DenseNet-BC) model on digits: train, compress (merge each dense layer's
Concatenate into one narrower ridge-fitted conv where that lowers MACs, one at a time, distilling
after each -> prune the rest -> distil -> SVD on the Dense layers -> distil -> exact fusions),
export int8 and compare with the float original and with tfmot magnitude pruning.

    python examples/dense_digits.py --seed 0 --json dense.json --details dense_steps.json
    python examples/dense_digits.py --seed 3 --width 16 --blocks 3     # a variant
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import parse_args, run_example  # noqa: E402
from seed_models import dense  # noqa: E402


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    run_example(dense, args, prune_ratio=(0.625, 0.5, 0.375, 0.25), svd_energy=(0.9, 0.95, 0.97))


if __name__ == "__main__":
    main()
