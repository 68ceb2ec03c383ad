"""`sim.merge`: the shards of a suite (`sim.run --shard K/N`, a CI job each) as one run.

Registered in the `sim` collection (tasks/sim.py). No VM: it only reads and writes files.
"""

from __future__ import annotations

from pathlib import Path

from invoke import Context, Exit

from ..errors import UsageError
from ..ui import say
from .common import check_output_path, emit, task, task_errors, write_junit_file


@task(
    name="merge",
    iterable=["from_"],
    help={
        "from_": "A shard's run folder, or a folder holding it (a work dir, a downloaded CI "
        "artifact: its latest run). Repeatable; give every shard.",
        "output": "The work dir to write the merged run into (made when missing): a new "
        "sim-YYMMDD-HHMMSS folder, laid out as one run's, and `latest` pointing at it.",
        "junit": "Also write a JUnit XML file of the merged run (a testcase per sim).",
        "report": "Also write the merged run's self-contained HTML report.",
    },
)
def merge(
    c: Context,
    from_: list[str] | None = None,
    output: str | None = None,
    junit: str | None = None,
    report: str | None = None,
) -> None:
    """Merge the run folders of shards (sim.run --shard K/N) into one run; no VM.

    Exit 0 when every sim of every shard passed, 1 when one failed or a shard or sim is
    missing (the merged run is written either way), 2 when the folders are no run or not
    shards of one split."""
    from ..sim import inputs
    from ..sim import merge as merge_mod

    with task_errors():
        if not output:
            raise UsageError("give the work dir to write the merged run into: -o DIR")
        check_output_path(junit, "--junit")
        check_output_path(report, "--report")
        merged = merge_mod.merge(list(from_ or []), Path(output))
        for line in merge_mod.describe(merged):
            say(line)
        emit(inputs.format_summary(inputs.summarize_results(Path(output))))
        if junit:
            from ..viewer.junit import write_sim_junit

            def write(where: Path, out: Path) -> Path:
                return write_sim_junit(where, out, merged.path.name)

            say(f"JUnit report: {write_junit_file(write, Path(output), Path(junit))}")
        if report:
            from ..viewer import report as report_mod

            try:
                out = report_mod.write_report(Path(output), Path(report), merged.path.name)
            except (OSError, ValueError) as e:
                raise UsageError(f"--report {report}: cannot write it there: {e}") from None
            say(f"report written to {out} ({out.stat().st_size} bytes)")
    if not merged.success:
        problems = []
        if merged.failed:
            problems.append(f"{len(merged.failed)} sim(s) failed: {', '.join(merged.failed)}")
        if merged.missing_shards:
            problems.append(f"shard(s) {', '.join(map(str, merged.missing_shards))} missing")
        if merged.missing_sims:
            problems.append(f"{len(merged.missing_sims)} sim(s) of the plan in no shard")
        raise Exit(f"error: the merged run is not a pass: {'; '.join(problems)}", code=1)
