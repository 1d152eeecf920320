"""The `ray` engine: one Ray task per partition, each running the local runner on its partition.

Imported only when extract.engine = "ray" (the optional extra `mvbind[ray]`). `ray.init()` joins the
cluster named by RAY_ADDRESS (or one already initialised in this process, e.g. by a notebook), else
starts a local one. A task asks for one GPU when the cluster has GPUs and encoder.device is not cpu
(Ray then sets CUDA_VISIBLE_DEVICES, so "auto" picks the task's GPU), else one CPU. `max_retries`
(extract.max_retries) reruns a task whose worker process died (node lost, OOM kill): the rerun takes
the partition's lock again and resumes from the committed shards, so a retry never repeats work
that was committed. An error inside the runner (a bad setting, a held lock) is not retried.
"""

from __future__ import annotations

from mvbind.errors import MvbindError
from mvbind.pipeline.config import Config
from mvbind.pipeline.runner import ExtractSummary, run_extraction


def _run_partition(config: Config, source) -> ExtractSummary:
    return run_extraction(config, source, progress=False)


def run_ray(jobs: list[Config], source) -> list[ExtractSummary]:
    """Run each job (one partition's config) as a Ray task; their summaries, in job order."""
    try:
        import ray
    except ImportError:
        raise MvbindError("setting extract.engine: ray is not installed; pip install 'mvbind[ray]' "
                          "or use --engine local / gpus") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(include_dashboard=False, log_to_driver=False)
    try:
        config = jobs[0]
        gpus = 1 if config.encoder.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0 else 0
        task = ray.remote(_run_partition).options(max_retries=config.extract.max_retries, num_cpus=1, num_gpus=gpus)
        refs = [task.remote(job, source) for job in jobs]
        try:
            return ray.get(refs)
        except ray.exceptions.RayError as err:
            cause = getattr(err, "cause", None) or err
            line = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
            raise MvbindError(f"a partition task failed on Ray: {line}; rerun the same command to resume "
                              "(committed shards are kept)") from None
    finally:
        if started_here:
            ray.shutdown()
