"""Prints one job of configurations.yml as KEY=VALUE words for `env`, with its launch line
(`&&`: an unknown job then submits nothing, not run.sub with all its defaults):

    job=$(python scripts/configuration.py dgxh100_8gpu_bf16_phase1) && env $job sbatch -N1 --ntasks-per-node=8 run.sub
"""

import argparse
import sys
from pathlib import Path

import yaml

CONFIGURATIONS = Path(__file__).resolve().parents[1] / "configurations.yml"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("job", help="a key of `jobs` in configurations.yml")
    args = parser.parse_args(argv)
    configurations = yaml.safe_load(CONFIGURATIONS.read_text())
    jobs, systems = configurations["jobs"], configurations["systems"]
    if args.job not in jobs:
        sys.exit(f"unknown job {args.job!r}; configurations.yml has: {', '.join(sorted(jobs))}")
    job = jobs[args.job]
    print(" ".join(f"{key}={value}" for key, value in job_variables(job, systems).items()))
    print(f"# sbatch -N{job['nodes']} --ntasks-per-node={job['gpus']} run.sub  (where Slurm "
          f"manages the GPUs, add --gpus-per-node={job['gpus']})", file=sys.stderr)


def job_variables(job, systems):
    """The job's variables; a job on part of a node's GPUs also says how many it uses, since
    run.sub otherwise refuses fewer tasks than the GPUs it finds on the node."""
    variables = dict(job["variables"])
    if job["gpus"] < systems[job["system"]]["gpus_per_node"]:
        variables["GPUS_PER_NODE"] = job["gpus"]
    return variables


if __name__ == "__main__":
    main()
