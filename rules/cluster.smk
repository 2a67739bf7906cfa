# Cluster runs (slurm/profile.yaml). Two things the profile alone cannot do:
# - the placeholders a user fills once (slurm_account, slurm_partition: CHANGE_ME) stop a run with one
#   line while unset, before any job is submitted, instead of sbatch errors per job; a dry run submits
#   nothing and plans as usual (Snakemake calls `onstart` only for a real run);
# - inside a SLURM job step the pre-emption signal (--signal=USR1@<s>, scancel's SIGTERM) reaches only the
#   step's main process, this remote Snakemake: endofm.jobsignals passes it on to the training processes,
#   which checkpoint and exit 75 (see endofm/jobsignals.py), so the retry resumes.
from endofm import jobsignals

PROFILE_PLACEHOLDER = "CHANGE_ME"


def unset_profile_resources():
    """The resources still set to the placeholder, as 'default-resources: slurm_account' strings."""

    def placeholders(resources):
        items = resources.items() if resources is not None and hasattr(resources, "items") else []
        return [k for k, v in items if str(getattr(v, "raw", v)).strip("'\"") == PROFILE_PLACEHOLDER]

    rs = workflow.resource_settings
    unset = [f"default-resources: {k}" for k in placeholders(rs.default_resources)]
    for rule_name, resources in dict(rs.overwrite_resources or {}).items():
        unset += [f"set-resources: {rule_name}: {k}" for k in placeholders(resources)]
    return unset


onstart:
    if unset := unset_profile_resources():
        raise WorkflowError(
            f"slurm/profile.yaml: set your cluster's value for {', '.join(unset)} (still"
            f" {PROFILE_PLACEHOLDER}) once in the profile, or in a copy of it passed as --profile"
        )


if workflow.remote_exec and jobsignals.in_slurm_job_step():
    jobsignals.forward_in_this_process()


# Local runs: a SIGINT or SIGTERM sent to Snakemake alone reaches its jobs as SIGTERM (training checkpoints
# and exits), and every job ends itself if this process has gone (see endofm/jobsignals.py).
if workflow.is_main_process:
    jobsignals.end_jobs_on_interrupt()
