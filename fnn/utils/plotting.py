"""``plot_model``/``model_to_dot``: a picture of a model's layers (Graphviz via pydot).

The graph is read from ``fnn.core.summary.summary_rows`` (abstract evaluation, no
parameters allocated): one node per top-level layer call, linked in call order, which is
the data flow of a ``Sequential`` or ``serial`` stack. ``to_file="*.dot"`` writes the DOT
text and needs nothing installed; other formats (png, svg, pdf, ...) need ``pydot`` and
Graphviz's ``dot`` program.
"""

from __future__ import annotations

import os
import shutil

from fnn.core.errors import ConfigError
from fnn.core.summary import summary_rows


def _quote(text: str) -> str:
    return '"' + str(text).replace('"', '\\"') + '"'  # keeps DOT's \n escapes


def _label(row: dict, show_shapes: bool, show_layer_names: bool) -> str:
    label = f"{row['name']} ({row['kind']})" if show_layer_names else row["kind"]
    return f"{label}\\nOutput shape: {row['output_shape']}" if show_shapes else label


def model_to_dot(
    model,
    show_shapes: bool = False,
    show_dtype: bool = False,
    show_layer_names: bool = False,
    rankdir: str = "TB",
    expand_nested: bool = False,
    dpi: int = 200,
    subgraph: bool = False,
    show_layer_activations: bool = False,
    show_trainable: bool = False,
) -> str:
    """The DOT source (text) of ``model``'s layer graph (a built ``fnn.Model``/``Sequential``).

    Labels are class names (``name (Class)`` with ``show_layer_names``, off by default as
    in Keras 3). ``expand_nested`` draws the layers inside nested stacks in a dashed box
    under their parent. ``show_dtype``, ``show_layer_activations`` and ``show_trainable``
    are not supported yet (``ConfigError``).

    >>> import fnn
    >>> from fnn.layers import Dense
    >>> m = fnn.Sequential([fnn.Input((4,)), Dense(2, name="out")])
    >>> print(model_to_dot(m, show_shapes=True, show_layer_names=True).splitlines()[4])
      "out" [label="out (Dense)\\nOutput shape: (None, 2)"];
    """
    del subgraph
    for flag, value in (
        ("show_dtype", show_dtype),
        ("show_layer_activations", show_layer_activations),
        ("show_trainable", show_trainable),
    ):
        if value:
            raise ConfigError(f"plot_model: expected {flag}=False, got True (not supported yet).")
    if rankdir not in ("TB", "LR", "BT", "RL"):
        raise ConfigError(
            f"plot_model: expected rankdir 'TB', 'LR', 'BT' or 'RL', got {rankdir!r}."
        )
    if not hasattr(model, "_require_built"):
        raise ConfigError(
            f"plot_model: expected an fnn Model or Sequential, got {type(model).__name__}."
        )
    model._require_built("plot_model")
    rows, _ = summary_rows(model.layer, *model._input_spec, batch_label="None")
    lines = [
        f"digraph {_quote(model.name)} {{",
        f"  graph [rankdir={rankdir}, dpi={int(dpi)}, concentrate=true];",
        "  node [shape=box];",
    ]
    shapes = ", ".join(str((None, *s.shape[1:])) for s in model._input_spec)
    input_label = "InputLayer" + (f"\\nInput shape: {shapes}" if show_shapes else "")
    lines.append(f'  "input_layer" [label={_quote(input_label)}];')
    previous, cluster, inner = "input_layer", None, {}  # inner: depth -> last nested node
    for i, row in enumerate(rows):
        if row["depth"] and not expand_nested:
            continue
        node = f"{row['name']}" if row["depth"] == 0 else f"{cluster}/{row['name']}#{i}"
        if row["depth"] == 0:
            if cluster is not None:
                lines.append("  }")
                cluster = None
            lines.append(
                f"  {_quote(node)} [label={_quote(_label(row, show_shapes, show_layer_names))}];"
            )
            lines.append(f"  {_quote(previous)} -> {_quote(node)};")
            previous = node
            if expand_nested and i + 1 < len(rows) and rows[i + 1]["depth"] > 0:
                cluster, inner = row["name"], {}
                lines.append(f"  subgraph {_quote('cluster_' + cluster)} {{")
                lines.append("    style=dashed;")
        else:
            label = _quote(_label(row, show_shapes, show_layer_names))
            lines.append(f"    {_quote(node)} [label={label}];")
            if row["depth"] in inner:  # the next call at the same depth inside this parent
                lines.append(f"    {_quote(inner[row['depth']])} -> {_quote(node)};")
            inner = {d: n for d, n in inner.items() if d < row["depth"]}
            inner[row["depth"]] = node
    if cluster is not None:
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def plot_model(
    model,
    to_file: str = "model.png",
    show_shapes: bool = False,
    show_dtype: bool = False,
    show_layer_names: bool = False,
    rankdir: str = "TB",
    expand_nested: bool = False,
    dpi: int = 200,
    show_layer_activations: bool = False,
    show_trainable: bool = False,
) -> str:
    """Draw ``model``'s layer graph to ``to_file`` (format from the extension) and return the
    path. ``.dot`` writes the DOT text; anything else renders through pydot + Graphviz and
    raises ``ConfigError`` naming what to install when they are missing."""
    dot = model_to_dot(
        model,
        show_shapes=show_shapes,
        show_dtype=show_dtype,
        show_layer_names=show_layer_names,
        rankdir=rankdir,
        expand_nested=expand_nested,
        dpi=dpi,
        show_layer_activations=show_layer_activations,
        show_trainable=show_trainable,
    )
    to_file = os.fspath(to_file)
    ext = os.path.splitext(to_file)[1].lstrip(".").lower() or "png"
    if ext == "dot":
        with open(to_file, "w") as f:
            f.write(dot)
        return to_file
    try:
        import pydot
    except ImportError:
        missing = "pydot package"
    else:
        missing = None if shutil.which("dot") else "Graphviz dot program on PATH"
    if missing:
        raise ConfigError(
            f"plot_model: expected pydot and Graphviz to draw {to_file}, got no {missing}. "
            "Install both (pip install pydot; apt-get install graphviz or brew install "
            "graphviz), or pass to_file='model.dot' to write the graph as DOT text."
        )
    (graph,) = pydot.graph_from_dot_data(dot)
    graph.write(to_file, format=ext)
    return to_file
