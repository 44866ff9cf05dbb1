"""The seed's "special convolutions" (MobileNetV2-style) model on digits: train, compress
(merge each inverted residual block into one narrower ridge-fitted conv, one at a time,
distilling after each -> prune the rest (expand / depthwise channels together) -> distil -> SVD
on the Dense layers -> distil -> exact fusions), export int8 and compare with the float original
and with tfmot magnitude pruning.

    python examples/mobile_digits.py --seed 0 --json mobile.json --details mobile_steps.json
    python examples/mobile_digits.py --seed 3 --width 24 --blocks 3     # a variant
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import parse_args, run_example  # noqa: E402
from seed_models import mobile  # noqa: E402


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    run_example(mobile, args, prune_ratio=(0.625, 0.5, 0.375, 0.25), svd_energy=(0.9, 0.95, 0.97))


if __name__ == "__main__":
    main()
