"""The HumanEval sandbox against hostile programs, checked from outside the evaluator.

Each hostile program runs through an evaluator in its own process (as `python -m
loldu_lightning.evaluate humaneval` would run it), followed by a correct program: the evaluator must
survive, score the hostile one as a failure and go on; the host (files, processes, its memory) is then
inspected from here. Programs that only a guard-free program could try start by re-importing `posix`,
which undoes the in-process guard, so the operating-system isolation is what stops them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from loldu_lightning.evaluate import sandbox
from loldu_lightning.evaluate.sandbox import SANDBOX_UID, SandboxUnavailable, run_program, sandbox_problem

PROBLEM = sandbox_problem()
requires_bwrap = pytest.mark.skipif(
    PROBLEM is not None, reason=f"bubblewrap isolation unavailable: {PROBLEM}; {sandbox.INSTALL_HINT}"
)
AS_ROOT = os.geteuid() == 0
GOOD = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n"
UNGUARDED = "import sys\ndel sys.modules['posix']\nimport posix, os, signal\n"  # a fresh posix, no guard
SECRET_VARIABLE = "LOLDU_SANDBOX_TEST_SECRET"

# The evaluator: reads a JSON list of programs, runs each (EVALUATOR_PID replaced by its own pid), then
# GOOD, printing one JSON outcome per line as it goes.
EVALUATOR = r"""
import json, os, sys
from loldu_lightning.evaluate.sandbox import run_program
request = json.load(sys.stdin)
for program in request["programs"]:
    outcome = run_program(program.replace("EVALUATOR_PID", str(os.getpid())), timeout=request["timeout"])
    print(json.dumps([outcome.passed, outcome.status, outcome.detail]), flush=True)
"""


def evaluate(programs: list[str], timeout: float = 3.0, secret: str = "", sample=None) -> tuple[list[list], list]:
    """Run `programs` then GOOD in a separate evaluator; returns its outcomes and, when `sample` is given,
    what sample(evaluator pid) returned every 50 ms while it ran."""
    environment = {**os.environ, SECRET_VARIABLE: secret}
    process = subprocess.Popen(
        [sys.executable, "-c", EVALUATOR],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment,
        text=True,
    )
    samples: list = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            samples.append(sample(process.pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    if sample is not None:
        watcher.start()
    try:
        request = json.dumps({"programs": [*programs, GOOD], "timeout": timeout})
        stdout, stderr = process.communicate(request, timeout=60 + len(programs) * (timeout + 5))
    finally:
        done.set()
        if sample is not None:
            watcher.join()
    outcomes = [json.loads(line) for line in stdout.splitlines()]
    assert process.returncode == 0, f"the evaluator died (exit code {process.returncode}): {stderr[-2000:]}"
    assert len(outcomes) == len(programs) + 1 and outcomes[-1][:2] == [True, "passed"], outcomes
    return outcomes[:-1], samples


@pytest.fixture
def host_dir():
    """A world-writable folder on the host, visible inside the sandbox (outside the hidden /tmp and homes)."""
    folder = Path(__file__).resolve().parents[1] / f".sandbox-test-{secrets.token_hex(4)}"
    folder.mkdir()
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder)


def _processes_of(uid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    found.add(int(entry))
            except OSError:
                pass
    return found


def _rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)


@requires_bwrap
def test_hostile_programs_fail_and_leave_the_host_untouched(host_dir: Path) -> None:
    token = secrets.token_hex(8)
    secret = secrets.token_hex(16)
    home_file = next((path for path in sorted(Path.home().iterdir()) if path.is_file()), None)
    private = host_dir / "private"
    private.mkdir(mode=0o700)
    (private / "key").write_text(secret)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    hostile = {
        # the three programs of the issue, as written
        "write a host file": f"open({str(host_dir / 'written')!r}, 'w').write('x')\n",
        "posix.system": f"import posix\nposix.system('touch {host_dir / 'system'}')\n",
        "kill the parent": "import posix, os\nposix.kill(os.getppid(), 9)\n",
        # the same, and more, without the in-process guard
        "unguarded system": UNGUARDED + f"assert posix.system('touch {host_dir / 'unguarded'}') == 0\n",
        "unguarded kill of the parent": UNGUARDED + "posix.kill(os.getppid(), signal.SIGKILL)\n",
        "kill the evaluator by pid": UNGUARDED + "posix.kill(EVALUATOR_PID, signal.SIGKILL)\n",
        "stop the evaluator by pid": UNGUARDED + "posix.kill(EVALUATOR_PID, signal.SIGSTOP)\n",
        "stop the parent": UNGUARDED + "posix.kill(os.getppid(), signal.SIGSTOP)\n",
        "kill everything": UNGUARDED + "posix.kill(-1, signal.SIGKILL)\n",
        "stop its own group": UNGUARDED + "posix.kill(0, signal.SIGSTOP)\n",
        "fill the disk": "".join(
            f"with open({str(folder / f'fill-{token}')!r}, 'wb') as out:\n    out.write(bytes(2**20))\n"
            for folder in (Path("/tmp"), Path("/var/tmp"), host_dir, Path.cwd())
        ),
        "fill tmp": (
            f"for index in range(64):\n    with open(f'/tmp/fill-{token}-{{index}}', 'wb') as out:\n"
            "        out.write(bytes(8 * 2**20))\n"
        ),
        "close its output": "import os\nos.close(1)\nos.close(2)\n",
        "close its output and hang": "import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass\n",
        "read the environment": (
            f"import glob, os\nfound = [os.environ.get({SECRET_VARIABLE!r}, '')]\n"
            "for path in glob.glob('/proc/*/environ'):\n    try:\n"
            "        found.append(open(path, 'rb').read().decode('latin-1'))\n"
            "    except OSError:\n        pass\n"
            f"assert {secret!r} in ' '.join(found)\n"
        ),
        "network": UNGUARDED + f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))\n",
    }
    if home_file is not None:
        hostile["read the home folder"] = f"open({str(home_file)!r}, 'rb').read()\n"
    if AS_ROOT:
        hostile["read a root-only file"] = f"assert open({str(private / 'key')!r}).read() == {secret!r}\n"
        hostile["read /etc/shadow"] = "open('/etc/shadow').read()\n"
        hostile["run as root"] = "import os\nassert os.getuid() == 0\n"
    before = set(Path("/tmp").iterdir())
    started = time.monotonic()
    outcomes, _ = evaluate(list(hostile.values()), secret=secret)
    elapsed = time.monotonic() - started

    verdicts = dict(zip(hostile, outcomes, strict=True))
    assert all(not passed for passed, _, _ in outcomes), {name: v for name, v in verdicts.items() if v[0]}
    assert verdicts["stop its own group"][1] == "timeout"
    assert verdicts["close its output and hang"][1] == "timeout"
    assert elapsed < 60, f"{elapsed:.0f} s: a stopped or hung program held the evaluator up"
    # from outside: nothing written, the listener never reached, the host's /tmp untouched
    assert sorted(path.name for path in host_dir.iterdir()) == ["private"]
    assert not any(path.name.startswith(f"fill-{token}") for path in Path("/tmp").iterdir())
    assert not (Path.cwd() / f"fill-{token}").exists() and not Path(f"/var/tmp/fill-{token}").exists()
    assert {path for path in set(Path("/tmp").iterdir()) - before if token in path.name} == set()
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
    except OSError:
        return ""


@requires_bwrap
def test_a_fork_bomb_is_bounded_and_cleaned_up() -> None:
    others = len(_processes_of(SANDBOX_UID if AS_ROOT else os.geteuid()))
    bomb = UNGUARDED + "while True:\n    try:\n        posix.fork()\n    except OSError:\n        pass\n"
    trees: list[set[int]] = []
    outcomes, counts = evaluate([bomb], sample=lambda pid: (trees.append(_descendants(pid)), len(trees[-1]))[1])
    assert outcomes[0][:2] == [False, "timeout"]
    # the limit is the user's processes at the start plus the margin; bwrap's two processes come on top
    assert sandbox.PROCESS_MARGIN / 2 < max(counts) <= others + sandbox.PROCESS_MARGIN + 4, (others, max(counts))
    everything = set().union(*trees)
    deadline = time.monotonic() + 5
    while _alive(everything) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(everything), "forked processes outlived the sandbox"


@requires_bwrap
def test_a_flood_of_output_does_not_fill_the_evaluator_memory() -> None:
    flood = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n    sys.stderr.write('y' * 65536)\n"
    outcomes, rss = evaluate([flood], timeout=4, sample=_rss_kib)
    assert outcomes[0][:2] == [False, "timeout"]
    # gigabytes pass through the pipes in 4 s; the evaluator keeps 64 KiB of each stream
    assert 0 < max(rss) < 200 * 1024, f"evaluator peak RSS {max(rss)} KiB"


@requires_bwrap
def test_killing_the_evaluator_ends_its_sandbox() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", EVALUATOR], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    process.stdin.write(json.dumps({"programs": ["import time\ntime.sleep(60)\n"], "timeout": 60}))
    process.stdin.close()
    deadline = time.monotonic() + 30
    while not (running := _interpreters(tree := _descendants(process.pid))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running, "the program never started"
    process.kill()
    process.wait()
    deadline = time.monotonic() + 5
    while _alive(tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(tree), f"the sandbox outlived its evaluator: {[_cmdline(pid)[:80] for pid in _alive(tree)]}"


def _interpreters(pids: set[int]) -> set[int]:
    """Those of `pids` that are the sandboxed interpreter itself (bwrap and setpriv have exec'd it)."""
    interpreter = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    return {pid for pid in pids if _cmdline(pid).split("\0")[0] == interpreter}


def _descendants(root: int) -> set[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (a zombie waiting for its reaper has ended)."""
    living = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            living.add(pid)
    return living


def test_without_bubblewrap_run_program_refuses_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "BWRAP", "loldu-no-such-bwrap")
    with pytest.raises(SandboxUnavailable) as refused:
        run_program(GOOD)
    message = str(refused.value)
    assert "\n" not in message
    assert "apt-get install bubblewrap" in message and "--unsafe-no-sandbox" in message
    assert "loldu-no-such-bwrap" in message
    # a bwrap that is there but cannot build the sandbox (here: a program that always fails) is refused too
    monkeypatch.setattr(sandbox, "BWRAP", "false")
    with pytest.raises(SandboxUnavailable, match="does not work here: exit code 1"):
        run_program(GOOD)


def test_the_unsafe_opt_in_runs_without_bubblewrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "BWRAP", "loldu-no-such-bwrap")
    assert sandbox.require_sandbox(unsafe_no_sandbox=True).startswith("none (--unsafe-no-sandbox")
    assert run_program(GOOD, unsafe_no_sandbox=True).passed
    wrong = run_program(GOOD.replace("a + b", "a - b"), unsafe_no_sandbox=True)
    assert (wrong.passed, wrong.status) == (False, "failed")
    stopped = run_program("while True:\n    pass\n", timeout=1, unsafe_no_sandbox=True)
    assert stopped.status == "timeout"


def test_humaneval_refuses_before_loading_a_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    from loldu_lightning.evaluate import humaneval
    from loldu_lightning.evaluate.__main__ import run_cli

    def no_model(args):
        raise AssertionError("the model was loaded although the evaluation was refused")

    command = ["humaneval", "--model", "tiny-llama", "--output-dir", str(tmp_path), "--limit", "1"]
    monkeypatch.setattr(sandbox, "BWRAP", "loldu-no-such-bwrap")
    monkeypatch.setattr(humaneval, "load_for_evaluation", no_model)
    with pytest.raises(SystemExit) as refused:
        run_cli(command)
    assert refused.value.code == 2
    printed = capsys.readouterr().err.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("error: Refusing to run generated code"), printed
    assert "apt-get install bubblewrap" in printed[0] and "--unsafe-no-sandbox" in printed[0]
    # with the opt-in it goes on to load the model
    with pytest.raises(AssertionError, match="the model was loaded"):
        run_cli([*command, "--unsafe-no-sandbox"])
