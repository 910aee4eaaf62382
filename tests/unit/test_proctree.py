"""ProcessTree with real processes: discovery, sampling, killing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from hpcpilot import proctree
from hpcpilot.proctree import TOKEN_ENV, LeftoverSweep, ProcessTree, TreeSample, new_token, read_proc_table

MB = 1024 * 1024


class Payload:
    """A payload launched the way the pilot does: bash -c, own session, token in env."""

    def __init__(self, command: str, workdir: Path) -> None:
        self.token = new_token()
        self.workdir = workdir
        env = {**os.environ, TOKEN_ENV: self.token}
        self.popen = subprocess.Popen(["bash", "-c", command], cwd=workdir, env=env,
                                      start_new_session=True)
        self.tree = ProcessTree(self.popen.pid, self.token)

    def pid_from(self, name: str) -> int:
        """Wait for the payload to write a pid into ``name`` and return it."""
        self.wait_for(name)
        return int((self.workdir / name).read_text())

    def wait_for(self, name: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not (self.workdir / name).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"payload did not create {name}")
            time.sleep(0.02)

    def cleanup(self) -> None:
        self.tree.kill(grace=0.0)
        self.popen.kill()
        self.popen.wait(timeout=10)


@pytest.fixture
def launch(tmp_path):
    payloads = []

    def start(command: str) -> Payload:
        payloads.append(Payload(command, tmp_path))
        return payloads[-1]

    yield start
    for payload in payloads:
        payload.cleanup()


def write_pid(name: str, pid: str = "$$") -> str:
    """Shell snippet publishing a pid in file ``name`` by rename, so it is never read half-written."""
    return f"echo {pid} > {name}.tmp && mv {name}.tmp {name}"


def is_gone(pid: int) -> bool:
    """Not running: absent, or a zombie nobody has reaped yet."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


@pytest.mark.timeout(30)
def test_new_tokens_are_unique():
    assert len({new_token() for _ in range(1000)}) == 1000


@pytest.mark.timeout(30)
def test_three_levels_of_descendants_are_found(launch, tmp_path):
    (tmp_path / "level3.sh").write_text(write_pid("level3") + "; exec sleep 60\n")
    payload = launch("bash -c 'bash level3.sh & " + write_pid("level2") + "; wait' & wait")
    level3, level2 = payload.pid_from("level3"), payload.pid_from("level2")
    assert {payload.popen.pid, level2, level3} <= payload.tree.pids()


@pytest.mark.timeout(30)
def test_child_that_called_setsid_is_found(launch):
    payload = launch("setsid bash -c '" + write_pid("detached") + "; exec sleep 60' & wait")
    detached = payload.pid_from("detached")
    assert os.getsid(detached) != os.getsid(payload.popen.pid)
    assert detached in payload.tree.pids()


@pytest.mark.timeout(30)
def test_orphan_in_new_session_is_found_and_killed(launch):
    payload = launch("setsid bash -c '" + write_pid("orphan") + "; exec sleep 60' & "
                     "while [ ! -e orphan ]; do sleep 0.02; done")
    orphan = payload.pid_from("orphan")
    assert payload.popen.wait(timeout=10) == 0
    assert orphan in payload.tree.pids()
    assert payload.tree.kill(grace=5.0) == []
    wait_until(lambda: is_gone(orphan))


@pytest.mark.timeout(30)
def test_orphan_without_token_is_found_through_its_session(launch):
    payload = launch("(env -u " + TOKEN_ENV + " bash -c '" + write_pid("daemon")
                     + "; exec sleep 60' &) ; while [ ! -e daemon ]; do sleep 0.02; done")
    daemon = payload.pid_from("daemon")
    payload.popen.wait(timeout=10)
    assert TOKEN_ENV.encode() not in Path(f"/proc/{daemon}/environ").read_bytes()
    assert daemon in payload.tree.pids()


@pytest.mark.timeout(30)
def test_payload_ignoring_sigterm_is_killed_after_grace(launch):
    payload = launch("trap '' TERM; sleep 60 & " + write_pid("child", "$!") + "; wait")
    child = payload.pid_from("child")
    started = time.monotonic()
    killed = payload.tree.kill(grace=1.0)
    assert time.monotonic() - started >= 1.0
    assert {payload.popen.pid, child} <= set(killed)
    assert payload.popen.wait(timeout=10) == -9
    wait_until(lambda: is_gone(child))


@pytest.mark.timeout(30)
def test_payload_honouring_sigterm_needs_no_sigkill(launch):
    payload = launch("trap 'exit 3' TERM; sleep 60 & " + write_pid("child", "$!") + "; wait")
    child = payload.pid_from("child")
    assert payload.tree.kill(grace=10.0) == []
    assert payload.popen.wait(timeout=10) == 3
    assert is_gone(child)


@pytest.mark.timeout(30)
def test_members_born_during_grace_are_killed_too(launch):
    payload = launch("trap '' TERM; touch ready; while true; do sleep 60 & sleep 0.1; done")
    payload.wait_for("ready")
    before = payload.tree.pids()
    killed = payload.tree.kill(grace=1.0)
    assert set(killed) - before, "children born during the grace period were SIGKILLed"
    payload.popen.wait(timeout=10)
    wait_until(lambda: all(is_gone(pid) for pid in killed))


@pytest.mark.timeout(30)
def test_stopped_payload_still_gets_to_handle_sigterm(launch):
    payload = launch("trap 'exit 4' TERM; touch ready; while true; do sleep 0.1; done")
    payload.wait_for("ready")
    os.kill(payload.popen.pid, signal.SIGSTOP)
    assert payload.tree.kill(grace=10.0) == []
    assert payload.popen.wait(timeout=10) == 4


@pytest.mark.timeout(60)
def test_after_kill_no_member_runs(launch):
    payload = launch(
        "trap '' TERM; for i in 1 2 3; do sleep 60 & done; "
        "setsid bash -c 'trap \"\" TERM; sleep 60; true' & (sleep 60 &); "
        "touch ready; wait")
    payload.wait_for("ready")
    wait_until(lambda: len(payload.tree.pids()) >= 7)
    pids = payload.tree.pids()
    payload.tree.kill(grace=0.5)
    payload.popen.wait(timeout=10)
    wait_until(lambda: all(is_gone(pid) for pid in pids))
    assert payload.tree.pids() == set()


@pytest.mark.timeout(30)
def test_sample_sees_memory_of_a_python_child(launch):
    payload = launch(f"{sys.executable} -c \"import pathlib, time; b = b'x' * (200 * {MB}); "
                     "pathlib.Path('ready').touch(); time.sleep(60)\"")
    payload.wait_for("ready")
    sample = payload.tree.sample()
    assert isinstance(sample, TreeSample)
    assert sample.rss >= 150 * 1024  # kB
    assert sample.pss >= 150 * 1024
    assert sample.vms >= sample.rss
    assert sample.nprocs >= 1  # bash execs a lone command: python may be the root itself


@pytest.mark.timeout(30)
def test_sample_sees_memory_of_an_orphan_that_left_while_the_root_runs(launch):
    # The subshell that started it is gone before the first sample: only the token tells it is the payload's.
    payload = launch(f"(setsid {sys.executable} -c \"import pathlib, time; b = b'x' * (200 * {MB}); "
                     "pathlib.Path('ready').touch(); time.sleep(60)\" &); sleep 60")
    payload.wait_for("ready")
    assert payload.tree.sample().pss >= 150 * 1024  # kB


@pytest.mark.timeout(30)
def test_io_of_a_finished_child_is_counted_once(launch):
    payload = launch("dd if=/dev/zero of=data bs=1M count=20 status=none; touch done; sleep 60")
    totals = []
    while not (payload.workdir / "done").exists():
        totals.append(payload.tree.sample().wchar)
        time.sleep(0.01)
    totals += [payload.tree.sample().wchar for _ in range(3)]
    assert totals == sorted(totals)
    assert 20 * MB <= totals[-1] < 30 * MB


@pytest.mark.timeout(30)
def test_vanished_root_gives_empty_tree(launch):
    payload = launch("exit 0")
    payload.popen.wait(timeout=10)
    assert payload.tree.pids() == set()
    assert payload.tree.kill(grace=1.0) == []
    assert payload.tree.sample().nprocs == 0


@pytest.mark.timeout(60)
def test_measure_sample_cost_of_64_processes(launch):
    payload = launch("for i in $(seq 63); do sleep 60 & done; touch ready; wait")
    payload.wait_for("ready")
    wait_until(lambda: payload.tree.sample().nprocs == 64)
    rounds = 20
    started = time.perf_counter()
    for _ in range(rounds):
        payload.tree.sample()
    per_sample = (time.perf_counter() - started) / rounds
    print(f"\none sample of a 64-process tree: {per_sample * 1000:.1f} ms "
          f"({len(psutil.pids())} processes on the node)")


# ---- one /proc table shared by many trees ----------------------------------


@pytest.mark.timeout(30)
def test_trees_sharing_one_table_see_what_they_see_alone(launch):
    first = launch("sleep 60 & sleep 60 & touch ready; wait")
    second = launch("sleep 60")
    first.wait_for("ready")
    wait_until(lambda: len(first.tree.pids()) == 3)
    table = read_proc_table()
    assert first.tree.pids(table=table) == first.tree.pids()
    assert second.tree.pids(table=table) == second.tree.pids() != set()
    assert first.tree.pids(table=table).isdisjoint(second.tree.pids(table=table))
    shared = first.tree.sample(table)
    assert shared.nprocs == 3 and shared.rss > 0 and shared.vms >= shared.rss


# ---- leftovers of finished payloads ------------------------------------------


ESCAPE = ("setsid bash -c '" + write_pid("escaped") + "; exec sleep 60' & "
          "while [ ! -e escaped ]; do sleep 0.02; done")


@pytest.mark.timeout(30)
def test_end_leftovers_ends_what_stayed_in_the_group(launch):
    payload = launch("sleep 60 & " + write_pid("child", "$!") + "; exit 0")
    child = payload.pid_from("child")
    assert payload.popen.wait(timeout=10) == 0
    assert payload.tree.end_leftovers(grace=5.0) == []
    wait_until(lambda: is_gone(child))


@pytest.mark.timeout(30)
def test_end_leftovers_leaves_escapees_to_the_sweep(launch):
    payload = launch(ESCAPE)
    escaped = payload.pid_from("escaped")
    assert payload.popen.wait(timeout=10) == 0
    assert payload.tree.end_leftovers(grace=5.0) == []
    assert not is_gone(escaped)  # it left the group: only its token tells
    sweep = LeftoverSweep()
    sweep.add(payload.token)
    assert sweep.sweep(grace=5.0) == []  # sleep honours SIGTERM
    wait_until(lambda: is_gone(escaped))


@pytest.mark.timeout(30)
def test_sweep_ends_only_leftovers_of_finished_payloads(launch):
    finished, running = launch(ESCAPE), launch("sleep 60 & " + write_pid("child", "$!") + "; wait")
    escaped, child = finished.pid_from("escaped"), running.pid_from("child")
    finished.popen.wait(timeout=10)
    sweep = LeftoverSweep()
    assert sweep.sweep(grace=1.0) == []  # nothing registered: nothing swept
    sweep.add(finished.token)
    sweep.sweep(grace=5.0)
    wait_until(lambda: is_gone(escaped))
    assert not is_gone(child) and running.popen.poll() is None


@pytest.mark.timeout(30)
def test_sweep_forgets_the_tokens_nobody_carries_any_more(launch):
    """A token is kept per finished payload: over a long run they must not pile up once their leftovers are gone."""
    payload = launch(ESCAPE)
    escaped = payload.pid_from("escaped")
    payload.popen.wait(timeout=10)
    sweep = LeftoverSweep()
    for _ in range(100):  # payloads that left nothing behind
        sweep.add(new_token())
    sweep.add(payload.token)
    sweep.sweep(grace=5.0)
    wait_until(lambda: is_gone(escaped))
    assert sweep._finished == set()


@pytest.mark.timeout(30)
def test_sweep_keeps_the_token_of_a_leftover_still_alive(launch, monkeypatch):
    """One that survived the sweep (stuck in the kernel, say) is looked for again at the next."""
    payload = launch(ESCAPE)
    escaped = payload.pid_from("escaped")
    payload.popen.wait(timeout=10)
    sweep = LeftoverSweep()
    sweep.add(new_token())
    sweep.add(payload.token)
    monkeypatch.setattr(proctree, "end_processes", lambda find, *args: sorted(find()))  # finds, ends nothing
    assert escaped in sweep.sweep(grace=0.1)
    assert sweep._finished == {payload.token.encode()}
    monkeypatch.undo()
    sweep.sweep(grace=5.0)
    wait_until(lambda: is_gone(escaped))


@pytest.mark.timeout(30)
def test_sweep_kills_leftover_ignoring_sigterm_and_its_children(launch):
    payload = launch("setsid bash -c 'trap \"\" TERM; sleep 60 & " + write_pid("grandchild", "$!") + "; "
                     + write_pid("escaped") + "; wait' & while [ ! -e escaped ]; do sleep 0.02; done")
    escaped, grandchild = payload.pid_from("escaped"), payload.pid_from("grandchild")
    payload.popen.wait(timeout=10)
    sweep = LeftoverSweep()
    sweep.add(payload.token)
    started = time.monotonic()
    assert escaped in sweep.sweep(grace=0.5)
    assert time.monotonic() - started >= 0.5
    wait_until(lambda: is_gone(escaped) and is_gone(grandchild))


PID_REUSE = r"""
import os, signal, subprocess, sys, threading
from hpcpilot.proctree import TOKEN_ENV, ProcessTree, new_token


def next_pid_after(pid):  # this namespace's allocator: the next process gets pid + 1
    with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
        handle.write(str(pid))


next_pid_after(1000)  # clear of the pids the tree never signals (init's, kthreadd's)
daemon = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
token = new_token()
root = subprocess.Popen(["sh", "-c", f"setsid {sys.executable} -c '{daemon}' & exec sleep 600"],
                        env={**os.environ, TOKEN_ENV: token}, start_new_session=True)
tree = ProcessTree(root.pid, token)


def ignores_sigterm(pid):
    ignored = next(line for line in open(f"/proc/{pid}/status") if line.startswith("SigIgn:")).split()[1]
    return int(ignored, 16) & (1 << (signal.SIGTERM - 1))


while len(members := tree.pids()) < 2:  # the root and its daemon, which left its session
    pass
daemon_pid, = members - {root.pid}
while not ignores_sigterm(daemon_pid):
    pass
killing = threading.Thread(target=tree.kill, args=(20.0,))
killing.start()  # SIGTERM: the root ends, the daemon outlives it for the grace
root.wait()
next_pid_after(root.pid - 1)
innocent = subprocess.Popen(["sleep", "600"], start_new_session=True)  # another job's payload, say
assert innocent.pid == root.pid, (innocent.pid, root.pid)
os.kill(daemon_pid, signal.SIGKILL)
killing.join()
print(innocent.poll(), flush=True)
innocent.kill()
"""


@pytest.mark.timeout(120)
def test_a_process_that_got_the_reaped_roots_pid_during_a_kill_is_left_alone() -> None:
    """A pid namespace of its own, whose next pid can be chosen (ns_last_pid), makes the reuse at once; on a
    node it takes pid_max forks, which a busy one does within a kill's grace when pid_max is 32768."""
    command = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", PID_REUSE]
    env = {**os.environ, "PYTHONPATH": str(Path(proctree.__file__).parents[1])}
    if os.geteuid() != 0 or subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs a pid namespace of its own (root)")
    child = subprocess.run(command, capture_output=True, text=True, timeout=100, env=env)
    assert (child.returncode, child.stdout) == (0, "None\n"), child.stderr[-2000:]


AS_PID_ONE = textwrap.dedent("""
    import os, subprocess, sys
    from hpcpilot.proctree import TOKEN_ENV, LeftoverSweep, ProcessTree, new_token, read_proc_table
    assert os.getpid() == 1
    token = new_token()
    payload = subprocess.Popen(["bash", "-c", "setsid sleep 60 & echo $! > orphan; exit 0"], cwd=sys.argv[2],
                               env={**os.environ, TOKEN_ENV: token}, start_new_session=True)
    tree = ProcessTree(payload.pid, token)
    payload.wait()
    assert int(open(os.path.join(sys.argv[2], "orphan")).read()) in tree.pids()
    if sys.argv[1] == "tree":
        tree.kill(grace=5.0)
    else:
        sweep = LeftoverSweep()
        sweep.add(token)
        sweep.sweep(grace=5.0)
    print(sorted(stat.pid for stat in read_proc_table().values() if stat.zombie))
""")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ender", ["tree", "sweep"])
def test_a_rank_that_is_pid_one_reaps_the_orphans_it_ends(tmp_path, ender):
    """In a container started without an init the rank is PID 1: its payloads' orphans come to it, and the
    ones it ends stay zombies, holding their pids for the pilot's life, unless it reaps them."""
    if os.geteuid() != 0:
        pytest.skip("a PID namespace needs root")
    result = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", AS_PID_ONE,
                             ender, str(tmp_path)], capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", "zombies left"
