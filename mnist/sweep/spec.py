"""What a sweep runs: variants (a grid or hand-made) x seeds over shared base flags,
validated as scripts/train.py validates its flags, before any process starts.
"""
import dataclasses
import itertools
import json
import os
import re
import shlex
from typing import Optional, Sequence

from mnist import cli
from mnist import config as config_lib
from mnist import errors
from mnist import metrics
from mnist import provenance

SPEC_FILE = 'sweep.json'
# results.json keys a sweep can compare on; lower is better for those ending so.
METRICS = config_lib.RESULT_METRICS
_NAME = re.compile(r'^[A-Za-z0-9._,=+-]+$')
# Set by the sweep itself for every run, so no variant may set them.
_SWEEP_OWNED = ('model_dir', 'seed')
# Where the data comes from, not what is trained: may differ between reruns.
_NOT_IDENTITY = ('model_dir', 'seed', 'data_dir', 'tfds_manual_dir')


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  flags: tuple  # Training flags on top of the base flags, e.g. ('--learning_rate=3e-3',).


@dataclasses.dataclass(frozen=True)
class Run:
  variant: Variant
  seed: int

  @property
  def name(self) -> str:
    return f'{self.variant.name}/seed{self.seed}'


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A validated sweep: every variant's config resolved from base + variant flags."""
  base_flags: tuple
  variants: tuple  # Of Variant; the baseline among them.
  baseline: str
  metric: str
  seeds: tuple
  configs: dict  # Variant name -> TrainConfig (seed 0, no model_dir).

  def runs(self) -> list:
    """Every (variant, seed), seed-major, so early runs already cover every variant."""
    return [Run(v, s) for s in self.seeds for v in self.variants]

  def train_flags(self, run: Run) -> list:
    return [*self.base_flags, *run.variant.flags, f'--seed={run.seed}']

  @property
  def with_validation(self) -> bool:
    return _with_validation(self.configs)

  @property
  def higher_is_better(self) -> bool:
    return metrics.higher_is_better(self.metric)  # Its declaration's (mnist/metrics/).

  def varied_fields(self) -> list:
    """The TrainConfig fields whose values differ between variants."""
    configs = list(self.configs.values())
    return [field for field in config_lib.TrainConfig.__dataclass_fields__
            if field not in _NOT_IDENTITY
            and len({repr(getattr(c, field)) for c in configs}) > 1]

  def identity(self) -> dict:
    """What makes two sweeps the same: each variant's resolved training config."""
    return {name: {k: v for k, v in dataclasses.asdict(config).items()
                   if k not in _NOT_IDENTITY}
            for name, config in self.configs.items()}


def grid(vary: Sequence[str]) -> list:
  """Variants from --vary=FLAG=V1,V2,... specs: the product of every flag's values,
  named FLAG=V,FLAG=V in the order given."""
  axes = []
  for spec in vary:
    flag, sep, values = spec.partition('=')
    flag = flag.strip().lstrip('-')
    values = [v.strip() for v in values.split(',')]
    if not sep or not flag or not all(values):
      raise errors.ConfigError(f'--vary={spec!r} must be FLAG=V1,V2,... '
                               "(e.g. --vary='learning_rate=1e-3,3e-3').")
    if len(set(values)) != len(values):
      raise errors.ConfigError(f'--vary={spec!r} repeats a value.')
    axes.append([(flag, value) for value in values])
  if len({axis[0][0] for axis in axes}) != len(axes):
    raise errors.ConfigError('--vary names the same flag twice: give its values in one '
                             '--vary.')
  return [Variant(','.join(f'{flag}={value}' for flag, value in choice),
                  tuple(f'--{flag}={value}' for flag, value in choice))
          for choice in itertools.product(*axes)]


def hand_made(variant_specs: Sequence[str]) -> list:
  """Variants from --variant=NAME:FLAGS specs (FLAGS split as a shell would)."""
  variants = []
  for spec in variant_specs:
    name, sep, flag_text = spec.partition(':')
    name = name.strip()
    if not sep or not _NAME.match(name):
      raise errors.ConfigError(
          f'--variant={spec!r} must be NAME:FLAGS with NAME of letters, digits and . _ , '
          "= + - (e.g. --variant='bn:--batch_norm --learning_rate=3e-3'; "
          "--variant='base:' for the base flags alone).")
    flags = tuple(shlex.split(flag_text))
    not_flags = [f for f in flags if not f.startswith('--')]
    if not_flags:
      raise errors.ConfigError(f'--variant {name}: {", ".join(not_flags)} is not a '
                               '--flag.')
    variants.append(Variant(name, flags))
  names = [v.name for v in variants]
  if len(set(names)) != len(names):
    raise errors.ConfigError(f'--variant names must differ; got {", ".join(names)}.')
  return variants


def build(base_flags: Sequence[str], vary: Sequence[str], variant_specs: Sequence[str],
          seeds: Sequence[int], baseline: Optional[str] = None,
          metric: Optional[str] = None) -> Sweep:
  """Validates everything a sweep will run; raises ConfigError before any run starts."""
  if vary and variant_specs:
    raise errors.ConfigError('Give either --vary (a grid) or --variant (hand-made '
                             'variants), not both.')
  variants = (grid(vary) if vary else hand_made(variant_specs) if variant_specs
              else [Variant('base', ())])
  configs, problems = {}, {}  # Problem -> the variants that have it.
  for variant in variants:
    flags = [*base_flags, *variant.flags]
    owned = [f for f in flags for name in _SWEEP_OWNED
             if f == f'--{name}' or f.startswith(f'--{name}=')]
    if owned:
      problems.setdefault(f'{", ".join(owned)} is set by the sweep for each run '
                          '(--sweep_dir, --seeds); leave it out.', []).append(variant.name)
      continue
    try:
      configs[variant.name], _ = cli.parse_train_flags(flags)
    except errors.ConfigError as e:
      problems.setdefault(str(e), []).append(variant.name)
  if problems:
    raise errors.ConfigError('Invalid variants, nothing was run. ' + ' '.join(
        f'{", ".join(names)}: {problem}' for problem, names in problems.items()))
  names = [v.name for v in variants]
  baseline = baseline or names[0]
  if baseline not in names:
    raise errors.ConfigError(f'--baseline={baseline} is not a variant; the variants are '
                             f'{", ".join(names)}.')
  with_validation = _with_validation(configs)
  metric = metric or ('validation_accuracy' if with_validation else 'test_accuracy')
  if metric not in METRICS:
    raise errors.ConfigError(f'--metric must be one of {", ".join(METRICS)}; got '
                             f'{metric!r}.')
  if metric.startswith('validation_') and not with_validation:
    raise errors.ConfigError(f'--metric={metric} needs --validation_split in every '
                             "variant (e.g. --train_split='train[:55000]' "
                             "--validation_split='train[55000:]').")
  return Sweep(tuple(base_flags), tuple(variants), baseline, metric, tuple(seeds), configs)


def _with_validation(configs: dict) -> bool:
  """Whether every variant evaluates on a validation split (its metrics exist)."""
  return all(c.validation_split for c in configs.values())


def check_sweep_dir(sweep: Sweep, sweep_dir: str,
                    code: Optional[provenance.Code] = None,
                    allow_code_change: bool = False) -> dict:
  """Records the sweep in SWEEP_DIR/sweep.json, or refuses a folder that holds another;
  returns the sweep.json record.

  The same variants with more seeds, another baseline or metric are the same sweep.
  It records the code version (`code`, default this checkout's) and packages it
  started with; a rerun under other code (another commit, other uncommitted changes)
  is refused unless allow_code_change, which records the change in sweep.json.
  """
  path = os.path.join(sweep_dir, SPEC_FILE)
  code = code or provenance.code_state()
  now = {'code_version': code.version, 'code': code.as_dict(),
         'packages': provenance.package_versions(), 'time': provenance.utc_now()}
  record = {'base_flags': list(sweep.base_flags),
            'variants': {v.name: list(v.flags) for v in sweep.variants},
            'configs': sweep.identity(), 'provenance': now}
  if os.path.exists(path):
    with open(path) as f:
      existing = json.load(f)
    if existing.get('configs') != record['configs']:
      raise errors.ConfigError(
          f'--sweep_dir={sweep_dir} holds a different sweep (its {SPEC_FILE} has other '
          f'variants or flags: {" ".join(existing.get("base_flags", []))} with '
          f'{", ".join(existing.get("variants", {}))}). Use a new --sweep_dir, or the '
          'same variants and flags to resume it.')
    versions = [existing.get('provenance', {}).get('code_version')] + [
        change['code_version'] for change in existing.get('code_changes', [])]
    if code.version in versions:
      return existing
    if not allow_code_change:
      raise errors.ConfigError(_code_change_refusal(sweep_dir, versions, code))
    existing.setdefault('code_changes', []).append(now)
    _write_json(path, existing)
    return existing
  if os.path.isdir(sweep_dir) and os.listdir(sweep_dir):
    raise errors.ConfigError(f'--sweep_dir={sweep_dir} is not empty and holds no '
                             f'{SPEC_FILE}: use a new or empty folder.')
  os.makedirs(sweep_dir, exist_ok=True)
  _write_json(path, record)
  return record


def _code_change_refusal(sweep_dir: str, versions: list, code: provenance.Code) -> str:
  started = versions[0] or f'code its {SPEC_FILE} does not record (an older sweep)'
  later = (f' (later allowed: {", ".join(versions[1:])})' if versions[1:] else '')
  return (f'--sweep_dir={sweep_dir} was started under code {started}{later}, and this '
          f'checkout is {code.version} ({_describe(code)}): resuming would mix code '
          'versions, so its comparisons would no longer be of the variants alone. Nothing '
          f'was run. Go back to {started} to resume it (commit or undo the change), use a '
          'new --sweep_dir, or pass --allow_code_change to continue anyway; the report '
          "then names each run's code version.")


def _describe(code: provenance.Code) -> str:
  if code.commit is None:
    return code.source
  if code.dirty:
    return (f'commit {code.commit[:12]} with uncommitted changes, diff sha256 '
            f'{code.diff_sha256[:12]}')
  return f'commit {code.commit[:12]}, no uncommitted changes'


def _write_json(path: str, value: dict):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)
