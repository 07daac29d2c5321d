"""Make the six advanced physics datasets (docs/data.md).

    python data_utils/generate_diverse_datasets.py              # all six (default --dataset all)
    python data_utils/generate_diverse_datasets.py --dataset orbital_motion --num 200

Datasets: multi_ball_collision, projectile, falling_objects (3k each), double_pendulum,
wave_motion, orbital_motion (2k each); 10% held out as test. Output as generate_physics_data.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import utils  # noqa: E402,F401  (import before torch: sets OMP/malloc tuning)
from data_utils import generate  # noqa: E402


def main(argv=None):
    return generate.cli(generate.DIVERSE_CLI, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
