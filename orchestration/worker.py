"""A Temporal worker for starsmith builds: workflows plus sync activities on a thread pool.

Several workers (on one machine or many) polling the same task queue share a build: each model
step is an activity that any of them can take, because it exchanges only references.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from temporalio.client import Client
from temporalio.worker import Worker

from starsmith.orchestration.activities import ProjectActivities
from starsmith.orchestration.workflows import WORKFLOWS
from starsmith.project import Project

TASK_QUEUE = "starsmith"


def make_worker(client: Client, project: Project, *, task_queue: str = TASK_QUEUE,
                max_activities: int = 4) -> Worker:
    """A worker for ``project`` whose activity threads bound how many model steps run here at
    once. The project is loaded (and its models checked) before the worker polls."""
    from starsmith.orchestration.step import preload

    acts = ProjectActivities(project)
    preload(acts.catalogue(""))
    return Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=acts.all(),
        activity_executor=ThreadPoolExecutor(max_workers=max_activities,
                                             thread_name_prefix="starsmith-step"),
        max_concurrent_activities=max_activities,
    )
