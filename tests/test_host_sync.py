"""ramen_jax.training.host_sync: two real processes agree on a stop step and name the hosts
that disagree or do not arrive; signals become a flag."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from test_multiprocess import free_port
from test_train import REPO

from ramen_jax.training import host_sync

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=sys.argv[2], num_processes=2, process_id=int(sys.argv[1])
    )
    from ramen_jax.training.host_sync import HostSync, LockstepError
    me = jax.process_index()
    sync = HostSync(every_steps=2, timeout_s=3, start_step=0)
    print("due", [s for s in range(7) if sync.due(s, new_shape=(s == 3))])
    print("stop0", sync.exchange(0, "same", "a", stop_requested=(me == 1)))
    print("stop2", sync.exchange(2, "same", "a", stop_requested=False))
    try:
        sync.exchange(4, f"digest{me}", f"shape {me}", stop_requested=False)
    except LockstepError as e:
        print("mismatch", e)
    if me == 0:  # process 1 never arrives at step 6
        try:
            sync.exchange(6, "same", "a", stop_requested=False)
        except LockstepError as e:
            print("missing", e)
    """
)


def test_two_processes_agree_on_stop_and_name_disagreeing_or_missing_hosts(tmp_path):
    script = tmp_path / "sync.py"
    script.write_text(SCRIPT)
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), address],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in processes]
    for p, (_, err) in zip(processes, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    lines = [dict(line.split(" ", 1) for line in out.splitlines()) for out, _ in outs]
    for got in lines:
        assert got["due"] == "[0, 2, 3, 4, 6]"  # start, every 2 steps, a new shape
        assert got["stop0"] == "True" and got["stop2"] == "False"  # one host's flag stops all
        assert got["mismatch"] == (
            "hosts out of lockstep before step 4: processes [0] run step 4 on shape 0; "
            "processes [1] run step 4 on shape 1"
        )
    assert lines[0]["missing"].startswith(
        "hosts out of lockstep before step 6: processes [1] did not reach it within 3 s"
    )


def test_one_process_needs_no_rpc_and_reads_its_flag_every_step():
    sync = host_sync.HostSync(every_steps=10, timeout_s=1, start_step=0)
    assert all(sync.due(s, new_shape=False) for s in range(5))
    assert sync.exchange(3, "x", "y", stop_requested=True) is True
    assert sync.exchanges == 0


def test_signals_set_a_flag_and_a_second_ctrl_c_interrupts():
    with host_sync.StopSignals() as signals:
        assert signals.received is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == "SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize("every, timeout", [(0, 1.0), (1, 0.0)])
def test_bad_settings_are_refused(every, timeout):
    with pytest.raises(ValueError, match="host_sync"):
        host_sync.HostSync(every_steps=every, timeout_s=timeout, start_step=0)
