"""Per-group fairness metrics against fairlearn (and scikit-learn) on random data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.core.errors import ConfigError, ShapeError
from fnn.training import fairness

fairlearn_metrics = pytest.importorskip("fairlearn.metrics")
sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _data(seed, n=400, groups=3):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, n)
    scores = np.clip(0.35 * y_true + rng.uniform(0, 0.75, n), 0, 1).astype(np.float32)
    g = rng.choice(np.array(["a", "b", "c", "d"])[:groups], n)
    return y_true, scores, g


def _fairlearn_frame(y_true, y_hat, g, sample_weight=None):
    fm = fairlearn_metrics
    skm = sklearn_metrics
    metrics = {
        "count": fm.count,
        "accuracy": skm.accuracy_score,
        "precision": lambda a, b, **kw: skm.precision_score(a, b, zero_division=0, **kw),
        "recall": skm.recall_score,
        "selection_rate": fm.selection_rate,
        "tpr": fm.true_positive_rate,
        "fpr": fm.false_positive_rate,
    }
    if sample_weight is not None:
        del metrics["count"]  # fairlearn's count ignores weights
    params = None
    if sample_weight is not None:
        params = {k: {"sample_weight": sample_weight} for k in metrics}
    return fm.MetricFrame(
        metrics=metrics, y_true=y_true, y_pred=y_hat, sensitive_features=g, sample_params=params
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_group_report_equals_fairlearn(seed):
    y_true, scores, g = _data(seed, groups=2 + seed)
    y_hat = (scores > 0.5).astype(int)
    report = fnn.metrics.group_report(y_true, scores, g)
    frame = _fairlearn_frame(y_true, y_hat, g)
    for group, row in frame.by_group.iterrows():
        for key, value in row.items():
            np.testing.assert_allclose(report["groups"][group][key], value, rtol=1e-5, atol=1e-6)
    fm = fairlearn_metrics
    expected = {
        "demographic_parity_difference": fm.demographic_parity_difference,
        "demographic_parity_ratio": fm.demographic_parity_ratio,
        "equalized_odds_difference": fm.equalized_odds_difference,
    }
    for key, fn in expected.items():
        want = fn(y_true, y_hat, sensitive_features=g)
        np.testing.assert_allclose(report[key], want, rtol=1e-5, atol=1e-6)


def test_weighted_batched_and_merged_states_equal_fairlearn():
    """States summed over batches (one scan) and merged across two "devices" equal one pass;
    weights as fairlearn's sample_weight; groups as int codes under jit."""
    y_true, scores, g = _data(2)
    codes = np.unique(g, return_inverse=True)[1]
    w = np.random.default_rng(3).uniform(0.2, 2.0, len(y_true)).astype(np.float32)
    gm = fnn.metrics.GroupMetrics(3)
    update = jax.jit(gm.update)
    halves = []
    for part in np.array_split(np.arange(len(y_true)), 2):
        state = gm.init()
        for idx in np.array_split(part, 4):
            state = update(state, y_true[idx], scores[idx], codes[idx], w[idx])
        halves.append(state)
    out = jax.jit(gm.compute)(gm.merge(*halves))
    frame = _fairlearn_frame(y_true, (scores > 0.5).astype(int), g, sample_weight=w)
    for i, (_, row) in enumerate(frame.by_group.iterrows()):
        for key, value in row.items():
            np.testing.assert_allclose(out[key][i], value, rtol=1e-5, atol=1e-6)
    # Per-device states merged by lax.psum (4 of the 8 fake CPU devices) give the same table.
    shards = lambda a: a.reshape(4, -1, *a.shape[1:])  # noqa: E731
    psummed = jax.pmap(
        lambda *b: jax.lax.psum(gm.update(gm.init(), *b), "d"),
        axis_name="d",
        devices=jax.devices()[:4],
    )(*(shards(a) for a in (y_true, scores, codes, w)))
    np.testing.assert_allclose(
        psummed["counts"][0], gm.merge(*halves)["counts"], rtol=1e-5, atol=1e-4
    )
    eo = fairlearn_metrics.equalized_odds_difference(
        y_true, (scores > 0.5).astype(int), sensitive_features=g, sample_weight=w
    )
    np.testing.assert_allclose(out["equalized_odds_difference"], eo, rtol=1e-5, atol=1e-6)


def test_multiclass_scores_and_pos_label():
    """Argmax of [n, 3] scores; accuracy over all classes, binary rates one-vs-rest."""
    rng = np.random.default_rng(4)
    y_true = rng.integers(0, 3, 300)
    probs = rng.dirichlet(np.ones(3), 300)
    g = rng.integers(0, 2, 300)
    gm = fnn.metrics.GroupMetrics(2, 3, pos_label=2)
    out = gm.compute(gm.update(gm.init(), y_true, jnp.asarray(probs), g))
    y_hat = probs.argmax(-1)
    for k in range(2):
        m = g == k
        skm = sklearn_metrics
        np.testing.assert_allclose(out["accuracy"][k], np.mean(y_true[m] == y_hat[m]), rtol=1e-6)
        np.testing.assert_allclose(
            out["recall"][k], skm.recall_score(y_true[m] == 2, y_hat[m] == 2), rtol=1e-6
        )
        np.testing.assert_allclose(out["selection_rate"][k], np.mean(y_hat[m] == 2), rtol=1e-6)


def test_evaluate_with_groups_and_bad_input():
    x = np.random.default_rng(5).normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    g = (x[:, 1] > 0).astype(np.int32)
    model = fnn.Sequential([fnn.Input((4,)), fnn.layers.Dense(1)])
    model.compile(optimizer="sgd", loss=fnn.losses.BinaryCrossentropy(from_logits=True))
    logs = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True, groups=g)
    logits = model.predict(x, verbose=0)
    want = fairness.group_report(y, (logits > 0).astype(int), g)
    assert logs["fairness"] == want
    assert set(logs) == {"loss", "fairness"}
    with pytest.raises(ConfigError, match="return_dict=True"):
        model.evaluate(x, y, verbose=0, groups=g)
    with pytest.raises(ShapeError, match="one group per example"):
        model.evaluate(x, y, verbose=0, return_dict=True, groups=g[:5])
    with pytest.raises(ConfigError, match="num_groups"):
        fnn.metrics.GroupMetrics(0)
    with pytest.raises(ShapeError, match="one entry per example"):
        gm = fnn.metrics.GroupMetrics(2)
        gm.update(gm.init(), y, logits, g[:3])
    text = fnn.metrics.format_report(want)
    assert text.splitlines()[0].split()[:3] == ["group", "count", "accuracy"]
    assert f"demographic_parity_difference: {want['demographic_parity_difference']:.4f}" in text


def test_cli_fairness_key_writes_the_per_group_table(tmp_path, capsys):
    """`fnn train` with `fairness: {feature: 0, split_at: 0.0}` on breast cancer: the table in
    results.json equals fairlearn's on the saved model's test predictions."""
    from pathlib import Path

    from fnn.cli import commands as cli

    config = str(Path(__file__).resolve().parents[1] / "configs" / "breast_cancer_mlp.yaml")
    run = tmp_path / "run"
    sets = [f"run_dir={run}", "epochs=2", "plots=false", "tensorboard=false"]
    sets += ["fairness.feature=0", "fairness.split_at=0.0"]
    code = cli.main(["train", config, *(a for s in sets for a in ("--set", s))])
    assert code == 0
    out = capsys.readouterr().out
    assert "fairness on the test split (input column 0 > 0.0)" in out
    import json

    report = json.loads((run / "results.json").read_text())["fairness"]
    (_, _), (x_test, y_test) = fnn.datasets.load("breast_cancer")
    model = fnn.load_model(run / "model")
    y_hat = (model.predict(x_test, verbose=0).reshape(-1) > 0).astype(int)
    g = np.where(x_test[:, 0] > 0.0, "> 0", "<= 0")
    frame = _fairlearn_frame(y_test, y_hat, g)
    for group, row in frame.by_group.iterrows():
        for key, value in row.items():
            np.testing.assert_allclose(report["groups"][group][key], value, rtol=1e-5, atol=1e-6)
    dpd = fairlearn_metrics.demographic_parity_difference(y_test, y_hat, sensitive_features=g)
    np.testing.assert_allclose(report["demographic_parity_difference"], dpd, rtol=1e-5)
    # fnn evaluate on the final checkpoint prints the same report as its last JSON line
    code = cli.main(
        ["evaluate", config, "--checkpoint", str(run), *(a for s in sets for a in ("--set", s))]
    )
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["fairness"] == report
    code = cli.main(["train", config, "--set", f"run_dir={tmp_path / 'bad'}"]
                    + ["--set", "fairness.feature=99"])  # fmt: skip
    assert code == 2
    assert "fairness.feature: expected an input column index below 30, got 99" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "bad" / "checkpoints").exists()
