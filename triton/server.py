"""Starts the Triton server bundled in the nvidia-pytriton wheel (Triton 2.51, python backend
only, CPU) on a model repository. triton/launch_triton_server.sh calls it when there is no
Docker engine for the tritonserver container.

    triton/.venv/bin/python triton/server.py --model_repository results/triton_models

Run it with the deployment environment's python (triton/setup_env.sh): the python backend
runs the models with that interpreter's library and packages. The script assembles the
backend directory the binary needs (libtriton_python.so, triton_python_backend_utils.py and
the stub for this Python version, taken from the wheel) inside the environment, sets
LD_LIBRARY_PATH (Python's LIBDIR, the wheel's nvidia_pytriton.libs) and PATH (the
environment's bin, through which the stub finds its packages), prints the command and then
replaces itself with tritonserver: the process id stays the server's.

Stop it with SIGTERM (kill PID) or Ctrl-C in the foreground. A server started in the
background of a non-interactive shell ignores SIGINT, as every such background job does.

Deliberate deviations from NVIDIA's launch_triton_server.sh: no container here; binds
--host (127.0.0.1) instead of every address; metrics off unless --metrics_port is given.
"""

import argparse
import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path

MIN_GLIBC = (2, 35)  # what the wheel's binary was built against


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model_repository", required=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind HTTP and gRPC to")
    parser.add_argument("--http_port", type=int, default=8000)
    parser.add_argument("--grpc_port", type=int, default=8001)
    parser.add_argument("--metrics_port", type=int, default=0, help="0: no metrics endpoint")
    parser.add_argument("--exit_timeout_secs", type=int, default=10,
                        help="how long a stopping server waits for requests in flight")
    parser.add_argument("--log_verbose", type=int, default=0)
    parser.add_argument("--print_only", action="store_true",
                        help="print the environment and command, do not start")
    return parser.parse_args(argv)


class ServerUnavailable(RuntimeError):
    """This machine cannot run the bundled server; the message says why."""


def glibc_version():
    name, _, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").partition(" ")
    if name != "glibc":
        return None
    return tuple(int(part) for part in version.split(".")[:2])


def pytriton_paths():
    """(tritonserver binary, its bundled libraries, the wheel's server folder)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise ServerUnavailable(f"nvidia-pytriton is not installed for {sys.executable}: "
                                f"run bash triton/setup_env.sh and use triton/.venv/bin/python")
    package = Path(spec.origin).parent
    server = package / "tritonserver"
    return server / "bin" / "tritonserver", package.parent / "nvidia_pytriton.libs", server


def check_machine():
    version = glibc_version()
    if version is None or version < MIN_GLIBC:
        found = ".".join(map(str, version)) if version else "no glibc"
        raise ServerUnavailable(f"the bundled tritonserver needs glibc >= "
                                f"{'.'.join(map(str, MIN_GLIBC))} (found {found}); use the "
                                f"tritonserver container instead")


def backend_directory(server):
    """<env>/tritonserver-backends with python/ assembled from the wheel (copied again
    whenever a file differs, e.g. after the wheel was upgraded)."""
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerUnavailable(f"nvidia-pytriton has no python backend stub for Python "
                                f"{python_version} ({stub})")
    backends = Path(sys.prefix) / "tritonserver-backends"
    python_backend = backends / "python"
    python_backend.mkdir(parents=True, exist_ok=True)
    sources = [server / "backends" / "python" / "libtriton_python.so",
               server / "backends" / "python" / "triton_python_backend_utils.py", stub]
    for source in sources:
        target = python_backend / source.name
        if not target.is_file() or target.stat().st_size != source.stat().st_size:
            shutil.copy2(source, target)
    return backends


def server_environment(libs):
    """The binary loads libpython (LIBDIR) and the wheel's libraries; the backend stub finds
    this environment's packages through its bin/ on PATH."""
    env = dict(os.environ)
    existing = [path for path in env.get("LD_LIBRARY_PATH", "").split(":") if path]
    env["LD_LIBRARY_PATH"] = ":".join([sysconfig.get_config_var("LIBDIR"), str(libs), *existing])
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def server_command(args, binary, backends):
    repository = Path(args.model_repository).resolve()
    if not repository.is_dir():
        raise ServerUnavailable(f"--model_repository {repository} is not a directory: build "
                                f"it with triton/deployer.py --backend python")
    command = [str(binary), f"--model-repository={repository}",
               f"--backend-directory={backends}",
               f"--http-address={args.host}", f"--http-port={args.http_port}",
               f"--grpc-address={args.host}", f"--grpc-port={args.grpc_port}",
               f"--exit-timeout-secs={args.exit_timeout_secs}",
               f"--log-verbose={args.log_verbose}"]
    if args.metrics_port:
        command += [f"--metrics-address={args.host}", f"--metrics-port={args.metrics_port}"]
    else:
        command.append("--allow-metrics=false")
    return command


def main(args):
    check_machine()
    binary, libs, server = pytriton_paths()
    command = server_command(args, binary, backend_directory(server))
    env = server_environment(libs)
    print(f"LD_LIBRARY_PATH={env['LD_LIBRARY_PATH']}", " ".join(command), flush=True)
    if args.print_only:
        return command
    os.execve(command[0], command, env)


if __name__ == "__main__":
    try:
        main(parse_args())
    except ServerUnavailable as error:
        sys.exit(f"error: {error}")
