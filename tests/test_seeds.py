"""The seed-noise check: its statistics against independent computations, its false-alarm rate
by simulation, and that it finds a planted move at its epoch."""
import math
import statistics

import numpy as np
import pytest

from odc_mini.study import seeds
from odc_mini.history import History


def history(values: dict[str, list[float]]) -> History:
    """A history whose per-epoch columns are ``values`` (row 0 included)."""
    h = History()
    rows = len(next(iter(values.values())))
    for e in range(rows):
        h.add_epoch(epoch=e, **{k: v[e] for k, v in values.items()})
    return h


def noisy_runs(n: int, rng: np.random.Generator, sd: float = 0.02) -> dict[int, History]:
    base = {"knn_top1": [0.30, 0.33, 0.35, 0.36], "loss": [np.nan, 2.9, 2.8, 2.7]}
    return {s: history({k: [v + rng.normal(0, sd) for v in vals] for k, vals in base.items()})
            for s in range(n)}


def test_spread_statistics_match_the_statistics_module():
    runs = noisy_runs(6, np.random.default_rng(0))
    spread = seeds.spread(runs)
    assert spread.seeds == list(range(6)) and set(spread.values) == {"knn_top1", "loss"}
    for e in range(4):
        column = [runs[s].epoch("knn_top1")[e] for s in range(6)]
        assert spread.mean("knn_top1")[e] == pytest.approx(statistics.fmean(column))
        assert spread.std("knn_top1")[e] == pytest.approx(statistics.stdev(column))


def test_multiplier_is_the_t_prediction_interval():
    # t with 9 degrees of freedom at 0.975 is 2.2622 (printed tables); n = 10 seeds
    assert seeds.multiplier(10, 1, alpha=0.05) == pytest.approx(2.2622 * math.sqrt(1.1), abs=1e-3)
    # Bonferroni: 5 comparisons at family alpha 0.05 use the 0.995 quantile, 3.2498 for 9 dof
    assert seeds.multiplier(10, 5, alpha=0.05) == pytest.approx(3.2498 * math.sqrt(1.1), abs=1e-3)


def test_a_fresh_seed_is_called_outside_at_most_alpha_of_the_time():
    """Simulated: 9 seed runs and one more from the same normal distribution, 4 comparisons
    each; the share of trials with any comparison outside its band is at most alpha (Bonferroni
    over independent comparisons gives about alpha)."""
    rng = np.random.default_rng(1)
    trials, n, c, alpha = 20_000, 9, 4, 0.01
    k = seeds.multiplier(n, c, alpha)
    draws = rng.normal(size=(trials, n + 1, c))
    others, new = draws[:, :n], draws[:, n]
    outside = np.abs(new - others.mean(1)) > k * others.std(1, ddof=1)
    rate = outside.any(axis=1).mean()
    assert 0.006 < rate < 0.013, rate


def test_locate_finds_a_planted_move_at_its_epoch():
    rng = np.random.default_rng(2)
    spread = seeds.spread(noisy_runs(9, rng))
    mean_run = {k: list(spread.mean(k)) for k in spread.values}
    positions = {p.metric: p for p in seeds.locate(history(mean_run), spread)}
    assert all(p.within for p in positions.values())
    assert list(positions["loss"].epochs) == [1, 2, 3]          # loss has no row 0
    moved = {k: list(v) for k, v in mean_run.items()}
    moved["knn_top1"][2] += 20 * spread.std("knn_top1")[2]
    positions = {p.metric: p for p in seeds.locate(history(moved), spread)}
    knn = positions["knn_top1"]
    assert not knn.within and knn.worst_epoch == 2
    assert knn.z[2] == pytest.approx(20)
    assert positions["loss"].within
    assert "OUTSIDE seed noise; largest at epoch 2" in knn.describe()


def test_last_only_compares_the_final_epoch_with_a_narrower_band():
    rng = np.random.default_rng(4)
    spread = seeds.spread(noisy_runs(6, rng))
    moved = {k: list(spread.mean(k)) for k in spread.values}
    moved["knn_top1"][2] += 20 * spread.std("knn_top1")[2]     # a move before the last epoch
    finals = seeds.locate(history(moved), spread, ("knn_top1", "loss"), last_only=True)
    assert [p.metric for p in finals] == ["knn_top1", "loss"]
    assert all(list(p.epochs) == [3] and p.within for p in finals)    # not seen at the end
    # 2 comparisons in all instead of 7, unless a held-out seed of the 6 lands further out
    for p in finals:
        assert p.multiplier == pytest.approx(max(seeds.multiplier(6, 2), seeds.TAIL_MARGIN *
                                                 spread.held_out_z(p.metric, [3])))
    assert finals[0].multiplier < seeds.locate(history(moved), spread)[0].multiplier
    moved["knn_top1"][3] += 20 * spread.std("knn_top1")[3]
    assert not seeds.locate(history(moved), spread, ("knn_top1",), last_only=True)[0].within


def test_the_floor_applies_where_the_seeds_agree():
    same = {s: history({"drift": [0.5, 0.4, 0.3]}) for s in range(5)}
    spread = seeds.spread(same)
    near = seeds.locate(history({"drift": [0.5, 0.4, 0.3 + 0.019]}), spread)[0]
    far = seeds.locate(history({"drift": [0.5, 0.4, 0.3 + 0.021]}), spread)[0]
    assert near.within and not far.within and far.worst_epoch == 2
    assert far.band[2] == seeds.FLOORS["drift"] and far.z[2] == np.inf


def test_bad_inputs_are_one_line_errors():
    runs = noisy_runs(4, np.random.default_rng(3))
    with pytest.raises(ValueError, match="at least 3 runs; got 2"):
        seeds.spread({0: runs[0], 1: runs[1]})
    short = history({"knn_top1": [0.3, 0.3]})
    with pytest.raises(ValueError, match="different numbers of epochs"):
        seeds.spread({**runs, 9: short})
    with pytest.raises(ValueError, match="the run has 1 epochs and the seed runs 3"):
        seeds.locate(short, seeds.spread(runs))


def test_held_out_z_and_the_tail_allowance():
    """Each seed held out in turn: the largest |z| among the others is computed by hand here;
    a spread holding one 'event' seed widens that metric's band to TAIL_MARGIN times it, so a
    run like the event is within seed noise, and other metrics keep the normal band."""
    rng = np.random.default_rng(5)
    runs = noisy_runs(9, rng)
    event = history({"knn_top1": [0.30, 0.33, 0.15, 0.36],       # a drop at epoch 2
                     "loss": [np.nan, 2.9, 2.8, 2.7]})
    runs[9] = event
    spread = seeds.spread(runs)
    values = np.stack([runs[s].epoch("knn_top1") for s in range(10)])
    by_hand = 0.0
    for i in range(10):
        others = np.delete(values, i, axis=0)
        z = np.abs(values[i] - others.mean(0)) / others.std(0, ddof=1)
        by_hand = max(by_hand, z.max())
    assert spread.held_out_z("knn_top1") == pytest.approx(by_hand)
    assert by_hand > 5                                      # the event stands out
    like_the_event = history({"knn_top1": [0.30, 0.33, 0.16, 0.36],
                              "loss": [np.nan, 2.9, 2.8, 2.7]})
    positions = {p.metric: p for p in seeds.locate(like_the_event, spread)}
    normal = seeds.multiplier(10, sum(len(p.epochs) for p in positions.values()))
    assert positions["knn_top1"].multiplier == pytest.approx(seeds.TAIL_MARGIN * by_hand)
    assert positions["knn_top1"].within
    assert positions["loss"].multiplier == pytest.approx(max(normal, seeds.TAIL_MARGIN *
                                                             spread.held_out_z("loss")))
    # without the event in the spread, the same run is outside: the allowance comes from the data
    calm = seeds.spread({s: runs[s] for s in range(9)})
    assert not {p.metric: p for p in seeds.locate(like_the_event, calm)}["knn_top1"].within
