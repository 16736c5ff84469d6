"""mnist/sweep/statistics.py against values worked by hand and from published tables."""
import pytest

from mnist.sweep import statistics


def test_estimate_mean_standard_error_and_t_interval():
  # 1..5: mean 3, sample sd sqrt(2.5) = 1.5811, stderr 0.7071; t(0.975, 4) = 2.7764
  # (t table), so the interval is 3 -/+ 1.9632.
  e = statistics.estimate([1, 2, 3, 4, 5])
  assert (e.n, e.mean) == (5, 3.0)
  assert e.stderr == pytest.approx(0.70711, abs=1e-5)
  assert e.ci_low == pytest.approx(1.0368, abs=1e-4)
  assert e.ci_high == pytest.approx(4.9632, abs=1e-4)


def test_estimate_of_one_seed_has_no_interval_and_of_none_is_an_error():
  assert statistics.estimate([0.99]) == statistics.Estimate(1, 0.99, None, None, None)
  with pytest.raises(ValueError):
    statistics.estimate([])


def test_paired_p_value():
  # Differences 1, 1, 2, 2, 4: mean 2, sd sqrt(1.5), t = 2 / (1.2247 / sqrt 5) = 3.6515
  # with 4 degrees of freedom; two-sided p = 0.0217 (t table: between 0.02 and 0.05).
  assert statistics.paired_p_value([1, 2, 3, 4, 5], [0, 1, 1, 2, 1]) == pytest.approx(
      0.02174, abs=1e-4)
  # Unpaired (Welch) the same numbers give 0.045: pairing by seed is what is tested.
  assert statistics.paired_p_value([1, 2], [1, 2]) == 1.0  # No difference at all.
  assert statistics.paired_p_value([2, 3], [1, 2]) == 0.0  # The same difference, twice.
  assert statistics.paired_p_value([1], [0]) is None


@pytest.mark.parametrize('effect, seeds', [(0.5, 34), (0.8, 15), (1.0, 10)])
def test_seeds_needed_matches_power_tables(effect, seeds):
  """Paired t-test, two-sided alpha 0.05, power 0.8 (G*Power's values)."""
  assert statistics.seeds_needed(effect * 0.002, 0.002) == seeds
  assert statistics.seeds_needed(-effect, 1.0) == seeds  # Either direction.


def test_seeds_needed_without_a_difference_is_none():
  assert statistics.seeds_needed(0.0, 0.001) is None


def test_compare_gives_the_verdict_in_the_metrics_direction():
  better = statistics.compare([1, 2, 3, 4, 5], [0, 1, 1, 2, 1], higher_is_better=True)
  assert better.verdict == 'better' and better.seeds_needed is None
  assert better.difference.mean == 2.0 and better.difference.ci_low > 0
  worse = statistics.compare([1, 2, 3, 4, 5], [0, 1, 1, 2, 1], higher_is_better=False)
  assert worse.verdict == 'worse'  # A loss that went up.


def test_compare_says_unresolved_and_how_many_seeds_would_resolve_it():
  # Differences 0.001, -0.0005, 0.002: mean 0.000833, sd 0.001258 (effect 0.66).
  c = statistics.compare([0.991, 0.9895, 0.992], [0.990, 0.990, 0.990], True)
  assert c.verdict == 'not resolved' and c.p_value > 0.05
  assert c.difference.ci_low < 0 < c.difference.ci_high
  assert c.seeds_needed == statistics.seeds_needed(0.00083333, 0.00125831)
  assert 15 < c.seeds_needed < 34  # Between the effects 0.8 and 0.5 above.
