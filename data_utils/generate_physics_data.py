"""Make Moving MNIST and the three basic physics datasets (docs/data.md).

    python data_utils/generate_physics_data.py --dataset all
    python data_utils/generate_physics_data.py --dataset pendulum --num 200 --out /tmp/data

Datasets: moving_mnist (10k), bouncing_balls, pendulum, spring_mass (5k each); 10% held out as
test. Output: data/<name>/{train,test}.npy, {train,test}_states.npz, meta.json, previews.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import utils  # noqa: E402,F401  (import before torch: sets OMP/malloc tuning)
from data_utils import generate  # noqa: E402


def main(argv=None):
    return generate.cli(generate.PHYSICS_CLI, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
