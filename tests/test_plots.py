"""Plot helpers draw what they claim: error bars from the intervals, one bar per class and score."""

from __future__ import annotations

import pandas as pd
from matplotlib.container import ErrorbarContainer

from gc10lib import plots


def test_comparison_bars_show_the_bootstrap_intervals():
    table = pd.DataFrame(
        {
            "model": ["a", "ensemble_mean"],
            "test_accuracy": [0.8, 0.9],
            "test_macro_f1": [0.7, 0.85],
            "test_accuracy_ci_lo": [0.7, 0.85],
            "test_accuracy_ci_hi": [0.9, 0.95],
            "test_macro_f1_ci_lo": [0.6, 0.8],
            "test_macro_f1_ci_hi": [0.8, 0.9],
        }
    )
    ax = plots.comparison_bars(table).axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2  # one set of error bars per metric
    segments = bars[0].lines[2][0].get_segments()  # the vertical line of each bar: (x, lo) -> (x, hi)
    assert [(round(s[0][1], 6), round(s[1][1], 6)) for s in segments] == [(0.7, 0.9), (0.85, 0.95)]
    no_ci = table.drop(columns=[c for c in table if "_ci_" in c])
    assert not [c for c in plots.comparison_bars(no_ci).axes[0].containers if isinstance(c, ErrorbarContainer)]
    plots.close_all()


def test_localization_bars_one_panel_per_model():
    rows = [
        {"model": m, "class": c, "pointing": 0.5, "energy": 0.4, "box_fraction": 0.1}
        for m in ("mobilenet", "ensemble_mean")
        for c in ("crease", "oil_spot", "silk_spot")
    ]
    fig = plots.localization_bars(pd.DataFrame(rows))
    assert [ax.get_title() for ax in fig.axes] == ["mobilenet", "ensemble_mean"]
    assert len(fig.axes[0].patches) == 6  # pointing and energy for three classes
    plots.close_all()


def test_split_composition_counts_every_class_and_subset():
    from gc10lib import data

    man = pd.DataFrame(
        {"class": ["a"] * 7 + ["b"] * 3, "subset": ["train"] * 5 + ["val", "test"] + ["train", "val", "test"]}
    )
    counts = data.split_counts(man, ["b", "a", "c"])  # a class with no images is a row of zeros
    assert counts.loc["a"].tolist() == [5, 1, 1, 7] and counts.loc["c"].tolist() == [0, 0, 0, 0]
    assert counts.loc["total"].tolist() == [6, 2, 2, 10] and list(counts.columns) == ["train", "val", "test", "total"]
    ax = plots.split_composition(man, ["b", "a", "c"]).axes[0]
    widths = [p.get_width() for p in ax.patches]  # three subsets x three classes, stacked
    assert widths == [1, 5, 0, 1, 1, 0, 1, 1, 0]
    assert ax.get_title() == "train 6 · val 2 · test 2"
    plots.close_all()


def test_training_curves_mark_where_each_phase_starts():
    hist = pd.DataFrame(
        {
            "loss": [1.0, 0.8, 0.7, 0.6, 0.5, 0.4],
            "val_loss": [1.1, 0.9, 0.8, 0.7, 0.6, 0.5],
            "phase": ["head", "head", "finetune", "maps", "maps", "maps"],
        }
    )
    ax = plots.training_curves(hist).axes[0]
    starts = sorted(line.get_xdata()[0] for line in ax.lines if line.get_xdata()[0] == line.get_xdata()[1])
    assert starts == [2.5, 3.5]  # after the two head epochs, after the fine-tune epoch
    assert ax.get_xlabel() == "epoch (head, then finetune, then maps)"
    plots.close_all()
