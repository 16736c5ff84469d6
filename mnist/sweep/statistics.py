"""Confidence intervals and paired comparisons over seeds, from scipy.stats.

Seeds are the unit: each run's final metric is one observation. A variant and the
baseline trained with the same seed share data order and initial weights, so they
are compared pairwise (a paired t-test on the per-seed differences).
"""
import dataclasses
import math
from typing import Optional, Sequence

from scipy import stats

CONFIDENCE = 0.95
POWER = 0.8  # For `seeds_needed`: the usual 80% chance of detecting the difference.
_MAX_SEEDS = 10_000  # seeds_needed gives up beyond this (a difference of ~0).


@dataclasses.dataclass(frozen=True)
class Estimate:
  """The mean of n observations with its standard error and t confidence interval
  (None where n < 2 leaves them undefined)."""
  n: int
  mean: float
  stderr: Optional[float]
  ci_low: Optional[float]
  ci_high: Optional[float]


@dataclasses.dataclass(frozen=True)
class Comparison:
  """A variant minus the baseline over the seeds both finished."""
  n: int
  difference: Estimate
  p_value: Optional[float]  # Two-sided paired t-test; None where n < 2.
  verdict: str  # 'better', 'worse' or 'not resolved'.
  seeds_needed: Optional[int]  # For 80% power at this difference and spread.


def estimate(values: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
  """Mean, standard error (sample standard deviation / sqrt(n)) and t-interval."""
  values = [float(v) for v in values]
  n = len(values)
  if n == 0:
    raise ValueError('No values to estimate from.')
  mean = math.fsum(values) / n
  if n < 2:
    return Estimate(n, mean, None, None, None)
  stderr = float(stats.sem(values))
  if stderr == 0:
    return Estimate(n, mean, 0.0, mean, mean)
  low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=stderr)
  return Estimate(n, mean, stderr, float(low), float(high))


def paired_p_value(values: Sequence[float], baseline: Sequence[float]) -> Optional[float]:
  """Two-sided p-value of the paired t-test that the mean difference is 0."""
  differences = [v - b for v, b in zip(values, baseline, strict=True)]
  if len(differences) < 2:
    return None
  if len(set(differences)) == 1:  # No spread: scipy returns nan for this.
    return 1.0 if differences[0] == 0 else 0.0
  return float(stats.ttest_rel(values, baseline).pvalue)


def seeds_needed(mean_difference: float, sd_difference: float, alpha: float = 0.05,
                 power: float = POWER) -> Optional[int]:
  """The fewest seeds at which a two-sided paired t-test at level `alpha` detects a true
  mean difference of `mean_difference` with probability `power`, given that spread of
  per-seed differences (the noncentral t distribution). None: no difference to detect."""
  if mean_difference == 0 or not math.isfinite(mean_difference):
    return None
  if sd_difference == 0:
    return 2
  effect = abs(mean_difference) / sd_difference
  for n in range(2, _MAX_SEEDS + 1):
    critical = stats.t.ppf(1 - alpha / 2, n - 1)
    noncentrality = effect * math.sqrt(n)
    detect = (stats.nct.sf(critical, n - 1, noncentrality) +
              stats.nct.cdf(-critical, n - 1, noncentrality))
    if detect >= power:
      return n
  return None


def compare(values: Sequence[float], baseline: Sequence[float], higher_is_better: bool,
            confidence: float = CONFIDENCE) -> Comparison:
  """`values` minus `baseline`, paired by position (the same seeds, in the same order)."""
  differences = [v - b for v, b in zip(values, baseline, strict=True)]
  difference = estimate(differences, confidence)
  p_value = paired_p_value(values, baseline)
  alpha = 1 - confidence
  verdict = 'not resolved'
  if p_value is not None and p_value < alpha and difference.mean != 0:
    verdict = 'better' if (difference.mean > 0) == higher_is_better else 'worse'
  needed = None
  if verdict == 'not resolved' and len(differences) >= 2:
    sd = float(stats.tstd(differences)) if len(set(differences)) > 1 else 0.0
    needed = seeds_needed(difference.mean, sd, alpha)
  return Comparison(len(differences), difference, p_value, verdict, needed)
