"""What the code's structure promises: the config loader stands alone, and
the loop is one class that composes its parts instead of inheriting them."""

import subprocess
import sys

RUNTIME = ("superd.spawn", "superd.preload", "superd.warmserver", "superd.forkserver",
           "superd.supervisor", "superd.listeners", "superd.records")


def test_importing_the_config_loader_starts_no_runtime():
    probe = ("import sys, superd.config; "
             "print(' '.join(m for m in sys.modules if m.startswith('superd')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=30, check=True).stdout.split()
    assert "superd.config" in out
    assert [m for m in RUNTIME if m in out] == []


def test_the_supervisor_is_not_made_of_mixins():
    from superd.supervisor import Supervisor
    assert Supervisor.__bases__ == (object,)


def test_thresholds_come_from_superd_thresholds_and_a_bad_one_is_a_config_error(tmp_path):
    from superd import tuning
    assert tuning.from_text("looping_pause=1, failures=3") == \
        tuning.Thresholds(looping_pause=1.0, failures=3)
    assert tuning.from_text("") == tuning.Thresholds()
    config = tmp_path / "services.yaml"
    config.write_text('services:\n  a: {listen: "127.0.0.1:0", server: /bin/cat}\n')
    for bad, says in (("loop_pause=1", "unknown threshold 'loop_pause'"),
                      ("failures=many", "is not a number"), ("kill_after=-1", "0 or more")):
        run = subprocess.run([sys.executable, "-m", "superd", "-f", str(config)],
                             env={"SUPERD_THRESHOLDS": bad, "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 78, run.stderr
        assert "config-error" in run.stderr and says in run.stderr
