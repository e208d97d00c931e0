"""``fnn.mixed_precision``: Keras 3's ``keras.mixed_precision`` names in one module.

The dtype policies (``DTypePolicy``/``Policy``, ``set_global_policy``, ``global_policy``)
are the layers' own (``fnn.core.dtype_policies``: resolved when a layer is constructed);
``LossScaleOptimizer`` is the optimizer wrapper float16 training needs
(``fnn.optimizers``).

>>> import fnn
>>> fnn.mixed_precision.set_global_policy("mixed_bfloat16")
>>> model = fnn.Sequential([fnn.layers.Dense(8, activation="relu"), fnn.layers.Dense(3),
...                         fnn.layers.Activation("softmax", dtype="float32")])
>>> fnn.mixed_precision.set_global_policy("float32")  # layers built above keep theirs
>>> [layer.dtype_policy.name for layer in model.layers]
['mixed_bfloat16', 'mixed_bfloat16', 'float32']
"""

from fnn.core.dtype_policies import (
    DTypePolicy,
    Policy,
    dtype_policy,
    global_policy,
    set_dtype_policy,
    set_global_policy,
)
from fnn.training.optimizers import LossScaleOptimizer, LossScaleState, loss_scale_state

__all__ = [
    "DTypePolicy",
    "LossScaleOptimizer",
    "LossScaleState",
    "Policy",
    "dtype_policy",
    "global_policy",
    "loss_scale_state",
    "set_dtype_policy",
    "set_global_policy",
]
