"""Per-group fairness report of a classifier: an MLP on the Wisconsin breast cancer data.

Run: python examples/fairness_breast_cancer.py [--epochs 40]   (a few seconds on 2 CPU cores)

The data has no demographic attribute, so the group here is DERIVED, and said plainly: it is
tumour size, "mean radius" (input column 0) above or below the data set's mean (the features
are standardized, so the split is at 0). It stands in for a sensitive attribute to show the
report; it is not one. Large tumours are mostly malignant, so the selection rates (of
"benign") differ a lot between the groups even for an accurate model: demographic parity is
the wrong goal for a diagnosis, and the TPR/FPR gaps (equalized odds) say more. ``model.evaluate(..., groups=g, return_dict=True)`` adds the
per-group accuracy, precision, recall, selection rate, TPR and FPR, and the
demographic-parity difference/ratio and equalized-odds difference between the groups
(:func:`fnn.metrics.group_report`, equal to fairlearn's). The same report comes from the CLI:
``fnn train configs/breast_cancer_mlp.yaml --set fairness.feature=0 --set
fairness.split_at=0.0``.
"""

from __future__ import annotations

import argparse

import numpy as np

import fnn
from fnn.layers import Dense, Dropout


def main(epochs: int = 40, seed: int = 0, verbose: int = 1) -> float:
    (x_train, y_train), (x_test, y_test) = fnn.datasets.load_breast_cancer(seed=seed)  # [n, 30]
    model = fnn.Sequential(
        [
            fnn.Input((30,)),
            Dense(32, activation="relu"),
            Dropout(0.2),
            Dense(16, activation="relu"),
            Dense(1),  # one logit: malignant (0) vs benign (1)
        ]
    )
    model.compile(
        optimizer="adam",
        loss=fnn.losses.BinaryCrossentropy(from_logits=True),
        metrics=[fnn.metrics.BinaryAccuracy(threshold=0.0)],
        seed=seed,
    )
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
    # Derived group (see the docstring): tumour mean radius above the standardized mean.
    groups = np.where(x_test[:, 0] > 0.0, "large radius", "small radius")
    logs = model.evaluate(x_test, y_test, verbose=0, return_dict=True, groups=groups)
    if verbose:
        print(f"test loss {logs['loss']:.4f}  test accuracy {logs['binary_accuracy']:.4f}")
        print(fnn.metrics.format_report(logs["fairness"]))
    return float(logs["binary_accuracy"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.seed)
