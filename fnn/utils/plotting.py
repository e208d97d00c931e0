"""``plot_model``/``model_to_dot``: a picture of a model's layers (Graphviz via pydot).

The graph is read from ``fnn.core.summary.summary_rows`` (abstract evaluation, no
parameters allocated): one node per top-level layer call, linked in call order, which is
the data flow of a ``Sequential`` or ``serial`` stack. ``to_file="*.dot"`` writes the DOT
text and needs nothing installed; other formats (png, svg, pdf, ...) need ``pydot`` and
Graphviz's ``dot`` program.
"""

from __future__ import annotations

import os
import re
import shutil

from fnn.core.errors import ConfigError
from fnn.core.summary import summary_rows


def _quote(text: str) -> str:
    return '"' + str(text).replace('"', '\\"') + '"'  # keeps DOT's \n escapes


def _label(row: dict, show_shapes: bool, show_layer_names: bool) -> str:
    label = f"{row['name']} ({row['kind']})" if show_layer_names else row["kind"]
    return f"{label}\\nOutput shape: {row['output_shape']}" if show_shapes else label


def _graph_nodes_and_edges(model, show_shapes, show_layer_names):
    """``([(node id, label)], [(from, to)])`` of a functional model's graph (inputs, then
    one box per layer, an edge per tensor), or None for other models."""
    from fnn.core import graph
    from fnn.shell.model import Sequential

    if getattr(model, "_graph_inputs", None) is None or isinstance(model, Sequential):
        return None
    inputs, names = model.inputs, model._input_names()
    keys = {id(child): key for key, child in model.layer.children or ()}
    ids = {id(t): n for t, n in zip(inputs, names)}
    nodes = []
    for t, n in zip(inputs, names):
        label = f"{n} (InputLayer)" if show_layer_names else "InputLayer"
        nodes.append((n, f"{label}\\nOutput shape: {t.shape}" if show_shapes else label))
    edges, seen = [], set()
    for node in graph._walk(model.outputs, inputs):
        key = keys[id(node.layer)]
        if key not in seen:
            seen.add(key)
            kind = node.layer.spec.class_name if node.layer.spec else type(node.layer).__name__
            shapes = ", ".join(str(o.shape) for o in node.flat_outputs)
            row = {"name": key, "kind": kind, "output_shape": shapes}
            nodes.append((key, _label(row, show_shapes, show_layer_names)))
        for t in node.inputs:
            src = ids.get(id(t)) or keys[id(t.node.layer)]
            if (src, key) not in edges:
                edges.append((src, key))
        for o in node.flat_outputs:
            ids.setdefault(id(o), key)
    return nodes, edges


def _draw_with_matplotlib(dot_nodes, edges, to_file, dpi) -> None:
    """A layered drawing (longest path from the inputs) for when Graphviz is missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    level = {n: 0 for n, _ in dot_nodes}
    for _ in range(len(dot_nodes)):
        for a, b in edges:
            level[b] = max(level[b], level[a] + 1)
    rows: dict[int, list] = {}
    for n, _ in dot_nodes:
        rows.setdefault(level[n], []).append(n)
    width = max(len(r) for r in rows.values())
    pos = {  # three units between boxes of one level, levels centred
        n: (3.0 * (i - (len(r) - 1) / 2), -lvl) for lvl, r in rows.items() for i, n in enumerate(r)
    }
    labels = dict(dot_nodes)
    fig, ax = plt.subplots(figsize=(max(4, 2.8 * width), max(2, 1.3 * len(rows))))
    for a, b in edges:
        ax.annotate(
            "", xy=pos[b], xytext=pos[a],
            arrowprops={"arrowstyle": "->", "shrinkA": 14, "shrinkB": 14, "color": "0.3"},
        )  # fmt: skip
    for n, (x, y) in pos.items():
        ax.text(
            x, y, labels[n].replace("\\n", "\n"), ha="center", va="center", fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.2"},
        )  # fmt: skip
    ax.set_xlim(-1.5 * width - 0.5, 1.5 * width + 0.5)
    ax.set_ylim(-max(rows) - 0.7, 0.7)
    ax.axis("off")
    fig.savefig(to_file, dpi=min(int(dpi), 150), bbox_inches="tight")
    plt.close(fig)


def _parse_dot(dot: str):
    """``(nodes, edges)`` back from the DOT text ``model_to_dot`` writes."""
    nodes = re.findall(r'^\s*"((?:[^"\\]|\\.)+)" \[label="((?:[^"\\]|\\.)*)"\];$', dot, re.M)
    edges = re.findall(r'^\s*"((?:[^"\\]|\\.)+)" -> "((?:[^"\\]|\\.)+)";$', dot, re.M)
    return nodes, edges


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
    graph_nodes = _graph_nodes_and_edges(model, show_shapes, show_layer_names)
    if graph_nodes is not None:
        nodes, edges = graph_nodes
        lines = [
            f"digraph {_quote(model.name)} {{",
            f"  graph [rankdir={rankdir}, dpi={int(dpi)}, concentrate=true];",
            "  node [shape=box];",
        ]
        lines += [f"  {_quote(n)} [label={_quote(label)}];" for n, label in nodes]
        lines += [f"  {_quote(a)} -> {_quote(b)};" for a, b in edges]
        return "\n".join([*lines, "}"]) + "\n"
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
    path. ``.dot`` writes the DOT text; other formats render through pydot + Graphviz, or,
    when those are missing, png/svg/pdf/jpg through matplotlib's plainer layered drawing."""
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
        if ext not in ("png", "svg", "pdf", "jpg", "jpeg"):
            raise ConfigError(
                f"plot_model: expected pydot and Graphviz to draw {to_file}, got no {missing}. "
                "Install both (pip install pydot; apt-get install graphviz or brew install "
                "graphviz), or pass to_file='model.dot' to write the graph as DOT text."
            )
        # Without Graphviz: a plainer layered drawing with matplotlib (a core dependency).
        _draw_with_matplotlib(*_parse_dot(dot), to_file, dpi)
        return to_file
    (graph,) = pydot.graph_from_dot_data(dot)
    graph.write(to_file, format=ext)
    return to_file
