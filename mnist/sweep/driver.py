"""A sweep from start to report: record it, write the HParams experiment, run what is
not finished, then report (printed, report.md/.csv/.json, report.png)."""
import os

from mnist import errors
from mnist import provenance
from mnist.sweep import hparams
from mnist.sweep import plot
from mnist.sweep import report as report_lib
from mnist.sweep import runner
from mnist.sweep import spec as spec_lib


class RunsFailedError(errors.Error):
  """Some runs of the sweep failed; the others finished and are reported."""
  exit_code = 1


def jobs(sweep: spec_lib.Sweep, sweep_dir: str) -> list:
  """One job per run: model_dir SWEEP_DIR/VARIANT/seedS, its log beside it."""
  # A run is finished once its results.json holds the metric the sweep compares.
  return [runner.Job(run.name, os.path.join(sweep_dir, run.name),
                     tuple(sweep.train_flags(run)),
                     os.path.join(sweep_dir, f'{run.name}.log'), sweep.metric)
          for run in sweep.runs()]


def run(sweep: spec_lib.Sweep, sweep_dir: str, parallel: int = 1, log=print,
        allow_code_change: bool = False, code=None, run_jobs=runner.run_jobs) -> dict:
  """Runs the sweep to its end (or SIGINT/SIGTERM: PreemptedError) and reports.
  A rerun under other code is refused unless allow_code_change (spec.check_sweep_dir);
  `code`: a provenance.Code (default this checkout's)."""
  code = code or provenance.code_state()
  # Refuses a folder holding another sweep, or this one under other code.
  sweep_record = spec_lib.check_sweep_dir(sweep, sweep_dir, code, allow_code_change)
  hparams.write_experiment(sweep, sweep_dir)
  all_jobs = jobs(sweep, sweep_dir)
  log(f'sweep: {len(sweep.variants)} variant(s) x {len(sweep.seeds)} seed(s) = '
      f'{len(all_jobs)} runs, {parallel} at a time, in {sweep_dir}; baseline '
      f'{sweep.baseline}, metric {sweep.metric}; code {code.version}', flush=True)

  def on_done(outcome: runner.Outcome):
    if outcome.skipped:
      log(f'{outcome.job.name}: finished earlier, skipped', flush=True)
    elif outcome.finished:
      r = outcome.results
      log(f'{outcome.job.name}: {sweep.metric} {r.get(sweep.metric)}  train '
          f'{r["train_seconds"]:.1f}s  process {outcome.process_seconds:.1f}s', flush=True)
    elif outcome.stopped:
      log(f'{outcome.job.name}: stopped (exit {outcome.returncode}); it resumes when the '
          'sweep is rerun', flush=True)
    elif outcome.incomplete:
      log(f'{outcome.job.name}: INCOMPLETE: {report_lib.failure_reason(outcome)}; a rerun '
          f'of the sweep resumes it to complete the record; log: {outcome.job.log_path}',
          flush=True)
    else:
      log(f'{outcome.job.name}: FAILED (exit {outcome.returncode}); log: '
          f'{outcome.job.log_path}', flush=True)

  # runner.run_jobs, or slurm.run_jobs (--launcher=slurm): the same Outcomes.
  outcomes = run_jobs(all_jobs, parallel, on_done)
  report = report_lib.build(sweep, outcomes, sweep_record)
  paths = report_lib.write(report, sweep_dir)
  paths['png'] = plot.draw(report, os.path.join(sweep_dir, 'report.png'))
  log(report_lib.markdown(report), flush=True)
  log(f'wrote {", ".join(paths.values())}', flush=True)
  if report['failed']:
    raise RunsFailedError(
        f'{len(report["failed"])} of {len(all_jobs)} runs failed: ' +
        '; '.join(f'{f["run"]} ({f["reason"]}, log {f["log"]})' for f in report['failed']) +
        '. The report covers the others; rerun the same command to retry the failed runs '
        '(each resumes from its checkpoints).')
  return report
