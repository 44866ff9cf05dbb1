"""The seed's VGG-like model on digits: train, compress (prune -> distil -> SVD -> distil ->
exact fusions), export int8 and compare with the float original and with tfmot magnitude
pruning.

    python examples/vgg_digits.py --seed 0 --json vgg.json --details vgg_steps.json
    python examples/vgg_digits.py --seed 3 --width 48                 # a variant
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import parse_args, run_example  # noqa: E402
from seed_models import vgg_like  # noqa: E402


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    run_example(vgg_like, args, prune_ratio=(0.75, 0.625, 0.5, 0.25), svd_energy=(0.9, 0.97))


if __name__ == "__main__":
    main()
