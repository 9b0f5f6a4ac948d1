"""The BIDS App through a real SLURM scheduler (single-node cluster from ``.ci/slurm-up.sh``).

Runs only with ``QSMFLOW_SLURM=1`` (set by ``.ci/run`` after it started the cluster); then a
missing ``sbatch`` or a cluster that does not answer is a failure, not a skip.

Proves: every Nipype node ran as a SLURM job (the job id is in each node's recorded environment
and the job is COMPLETED with exit code 0 in the scheduler's completion log) except those that
Nipype runs in the submitting process by design (``run_without_submitting``: merges, sinks),
each job asked for the node's memory and CPUs (--mem/--cpus-per-task from mem_gb/n_procs), and the derivatives equal
those of a MultiProc run of the same dataset.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from _robustness import app_env, assert_same_derivatives, node_results, run_app

pytestmark = pytest.mark.skipif(os.environ.get("QSMFLOW_SLURM") != "1",
                                reason="set QSMFLOW_SLURM=1 after `bash .ci/slurm-up.sh`")

SLURM_DIR = Path(os.environ.get("QSMFLOW_SLURM_DIR", "/var/tmp/qsmflow-slurm"))
JOBCOMP = SLURM_DIR / "jobcomp.log"
ARGS = ("--participant-label", "01", "--inversion", "tkd", "--skip-bids-validation")


def _jobcomp() -> dict[int, dict]:
    """JobId -> fields of every job in the completion log (jobcomp/filetxt)."""
    jobs = {}
    if JOBCOMP.is_file():
        for line in JOBCOMP.read_text().splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobId" in fields:
                jobs[int(fields["JobId"])] = fields
    return jobs


@pytest.fixture(scope="module")
def cluster():
    for tool in ("sbatch", "squeue", "sinfo"):
        assert shutil.which(tool), f"QSMFLOW_SLURM=1 but {tool} is not on PATH; run .ci/slurm-up.sh"
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    assert state.returncode == 0 and re.search(r"idle|mix|alloc", state.stdout), (
        f"SLURM node not usable: {state.stdout!r} {state.stderr!r}")
    return SLURM_DIR


@pytest.fixture(scope="module")
def demo_bids(tmp_path_factory):
    from qsmflow.sims.megre import make_demo_dataset

    root = tmp_path_factory.mktemp("slurm") / "bids"
    make_demo_dataset(root, n_subjects=1, seed=3)
    return root


def test_bids_app_on_slurm_equals_multiproc(cluster, demo_bids, tmp_path):
    plugin = tmp_path / "slurm.yml"
    plugin.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: \"--time=00:10:00\"\n"
                      "  max_tries: 3\n  retry_timeout: 2\n")
    before = set(_jobcomp())
    t_start = datetime.now().replace(microsecond=0)

    r = run_app(demo_bids, tmp_path / "out_slurm", "participant", *ARGS,
                "-w", tmp_path / "work_slurm", "--use-plugin", plugin, timeout=600,
                env=app_env(LOGNAME=os.environ.get("LOGNAME") or "qsmflow"))
    assert r.returncode == 0, f"SLURM run failed\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"

    # every node that ran recorded the SLURM job it ran in, except the few that Nipype runs in
    # the main process by design (run_without_submitting: merges and sinks, milliseconds each)
    from nipype.utils.filemanip import loadpkl

    results = node_results(tmp_path / "work_slurm")
    job_of, local = {}, []
    for path, res in results:
        node = loadpkl(path.parent / "_node.pklz")
        env = getattr(res.runtime, "environ", None) or {}
        if getattr(node, "run_without_submitting", False):
            assert "SLURM_JOB_ID" not in env
            local.append(path.parent.name)
            continue
        assert "SLURM_JOB_ID" in env, f"{path.parent.name} did not run as a SLURM job"
        job_of[str(path.parent)] = int(env["SLURM_JOB_ID"])
    assert len(job_of) >= 5, f"only {len(job_of)} nodes went through SLURM ({local} locally)"
    # only plumbing stays local: sinks (ds_*, by the naming convention) and merges
    compute_local = [n for n in local if not re.match(r"^_?(ds_|gather|merge)", n)]
    assert not compute_local, f"compute nodes ran outside SLURM: {compute_local}"
    assert len(set(job_of.values())) == len(job_of), "nodes shared a job: not one job per node"

    # ... and the scheduler recorded each of those jobs as completed, with the node's resources
    jobs = {}
    for _ in range(30):  # jobcomp is written when slurmctld reaps the job: allow a few seconds
        jobs = _jobcomp()
        if all(j in jobs for j in job_of.values()):
            break
        time.sleep(1)
    for node, jid in job_of.items():
        assert jid not in before, f"{node}: job {jid} is older than this run"
        assert jid in jobs, f"{node}: job {jid} missing from {JOBCOMP}"
        rec = jobs[jid]
        assert datetime.fromisoformat(rec["SubmitTime"]) >= t_start, (node, rec["SubmitTime"])
        assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", (node, rec)
        tres = dict(kv.split("=") for kv in rec["Tres"].split(",") if "=" in kv)
        # qsmflow turns mem_gb into --mem=<n>G: without it SLURM would give DefMemPerCPU (512M)
        assert tres["mem"].endswith("G"), f"{node}: job {jid} got {tres} (no --mem=<n>G asked)"
        assert int(tres["cpu"]) >= 1
    # Nipype left one batch script per submitted job
    scripts = list((tmp_path / "work_slurm").rglob("batchscript_*.sh"))
    assert len(scripts) >= len(job_of)

    r2 = run_app(demo_bids, tmp_path / "out_mp", "participant", *ARGS,
                 "-w", tmp_path / "work_mp", "--nprocs", "2", timeout=600)
    assert r2.returncode == 0, f"MultiProc run failed\n{r2.stdout[-3000:]}\n{r2.stderr[-3000:]}"
    assert_same_derivatives(tmp_path / "out_slurm", tmp_path / "out_mp")
