"""Write a run's report: the report layer's pages with the run's task's sections."""

from dltool.core import runs
from dltool.report import reports
from dltool.tasks import task_for


def write_run_report(project_dir, run, echo=None):
    """Draws a run's figures and writes its `report.html` and `report.md`.

    Args:
        project_dir: The project folder.
        run: The `dltool.core.runs.Run`.
        echo: Function that prints a line for the user, or None.

    Returns:
        The path of `report.html`.

    Raises:
        DataError: a file of the run is unreadable.
    """
    return reports.write_report(project_dir, run, task_for(run.template), echo=echo)


def report_for(project_dir, run_name=None, echo=None):
    """Writes the report of a run again (`dltool report`).

    Args:
        project_dir: The project folder.
        run_name: The run; the newest trained one when None.
        echo: Function that prints a line for the user, or None.

    Returns:
        The path of `report.html`.

    Raises:
        ProjectError: no such run, nothing trained yet.
    """
    return write_run_report(project_dir, runs.find_trained(project_dir, run_name), echo=echo)
