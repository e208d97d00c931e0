"""The tf.keras quickstart with ``tf.keras`` replaced by ``fnn``, on scikit-learn's digits.

Run: python examples/keras_quickstart.py   (about 20 s on 2 CPU cores)

The model code is the tf.keras snippet line for line (``fnn.Input`` gives the input
shape, as ``keras.Input`` does in Keras 3); ``--api functional`` builds the same network with
the Keras functional API. Underneath, ``model.params`` is a plain dict
and each training step is one compiled call of ``fnn.train``'s pure step function.
"""

from __future__ import annotations

import argparse

import numpy as np

import fnn
from fnn.layers import Conv2D, Dense, Flatten, MaxPooling2D


def load_data(seed: int = 0):
    """Digits as [n, 8, 8, 1] images in [0, 1] and one-hot labels [n, 10]; 10% of the
    training split held out for validation."""
    (x_train, y_train), test = fnn.datasets.load_digits(seed=seed, as_images=True)
    train, val = fnn.datasets.split(x_train, y_train, test_size=0.1, seed=seed)
    return tuple((x, np.eye(10, dtype=np.float32)[y]) for x, y in (train, val, test))


def sequential_model():
    model = fnn.Sequential()
    model.add(fnn.Input(shape=(8, 8, 1)))
    model.add(Conv2D(32, (3, 3), activation="relu"))
    model.add(MaxPooling2D((2, 2)))
    model.add(Flatten())
    model.add(Dense(64, activation="relu"))
    model.add(Dense(10, activation="softmax"))
    return model


def functional_model():
    """The same network in the Keras functional API."""
    inputs = fnn.Input(shape=(8, 8, 1), name="digits")
    x = Conv2D(32, (3, 3), activation="relu")(inputs)
    x = MaxPooling2D((2, 2))(x)
    x = Dense(64, activation="relu")(Flatten()(x))
    outputs = Dense(10, activation="softmax")(x)
    return fnn.Model(inputs=inputs, outputs=outputs, name="digits_cnn")


def main(epochs: int = 20, batch_size: int = 32, verbose="auto", api="sequential") -> float:
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = load_data()

    model = sequential_model() if api == "sequential" else functional_model()
    model.summary()

    model.compile(
        optimizer=fnn.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=epochs,
        batch_size=batch_size,
        verbose=verbose,
    )
    predictions = model.predict(x_test, verbose=0)
    accuracy = float(np.mean(np.argmax(predictions, -1) == np.argmax(y_test, -1)))
    loss, acc = model.evaluate(x_test, y_test, verbose=0)
    print(f"logged keys: {sorted(history.history)}")
    print(f"test loss {loss:.4f}, test accuracy {acc:.4f} (from predict: {accuracy:.4f})")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--api", choices=["sequential", "functional"], default="sequential")
    args = parser.parse_args()
    main(args.epochs, args.batch_size, api=args.api)
