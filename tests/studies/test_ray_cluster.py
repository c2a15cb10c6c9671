"""The Ray backend against a Ray head started apart from the test process (``ray start
--head`` in a subprocess, reached by address), and the error for an address with no cluster."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from study_cases import assert_same_training

from steerlens.cli import main
from steerlens.errors import ClusterError
from steerlens.studies import ray_backend
from steerlens.studies.ray_backend import RayBackend
from steerlens.studies.run import run_study
from steerlens.studies.spec import StudySpec

ray = pytest.importorskip("ray")

SPECS = Path(__file__).parent / "specs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_head():
    """A one-node Ray cluster on loopback, in its own process group, stopped by that group
    only (``ray stop`` would also stop other Ray instances of this user)."""
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process; the test needs a fresh driver.")
    port = _free_port()
    # Ray's socket paths must stay short (AF_UNIX limit), so not under pytest's tmp_path.
    temp = tempfile.mkdtemp(prefix="slray")
    command = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=2",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
    ]
    # Ray 2.5x+ turns on token authentication when ~/.ray/auth_token exists; a loopback test
    # cluster does without, on both sides (the driver reads RAY_AUTH_MODE at ray.init).
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if head.poll() is not None or time.monotonic() > deadline:
                out = head.stdout.read().decode(errors="replace") if head.stdout else ""
                pytest.fail(f"ray start --head did not come up on {address}:\n{out[-2000:]}")
            time.sleep(0.5)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


@pytest.mark.slow
def test_a_study_on_a_separately_started_cluster_equals_the_serial_run(ray_head, tmp_path, tiny):
    spec = StudySpec.from_toml(SPECS / "tiny.toml")
    serial = run_study(spec, tmp_path / "serial", batch_size=2, progress=False, evaluate=False)
    backend = RayBackend(address=ray_head)
    remote = run_study(
        spec, tmp_path / "ray", backend=backend, batch_size=2, progress=False, evaluate=False
    )
    assert not ray.is_initialized()  # the backend connected, ran, and disconnected
    names = sorted(u.name for u in spec.units())
    assert sorted(serial.finished()) == sorted(remote.finished()) == names
    # The cluster's workers are other processes (on a real cluster, other devices): the same
    # training, its float32 sums in another order (losses within the derived bound, vectors
    # by direction).
    assert_same_training(tiny, spec, remote, serial)
    ta = serial.table().set_index("unit").sort_index()
    tb = remote.table().set_index("unit").sort_index()
    assert (tb.status == "done").all() and (ta.steps == tb.steps).all()


def test_a_port_where_nothing_listens_is_refused_at_once(tmp_path):
    address = f"127.0.0.1:{_free_port()}"  # closed again: nothing listens there
    spec = StudySpec.from_toml(SPECS / "tiny.toml")
    started = time.monotonic()
    with pytest.raises(ClusterError, match=rf"'{address}'.*refused.*ray start --head"):
        run_study(spec, tmp_path / "s", backend=RayBackend(address=address), progress=False)
    assert time.monotonic() - started < 30  # ray.init alone retries for minutes
    assert not ray.is_initialized()


def test_an_address_without_a_cluster_names_it_and_the_likely_causes(monkeypatch, tmp_path):
    # A real refused connection takes Ray over a minute of retries; its error is the same
    # ConnectionError, raised by ray.init.
    def refuse(address=None, **kwargs):
        raise ConnectionError(f"Failed to connect to Ray cluster at {address}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray_backend, "check_reachable", lambda *args: None)  # ray.init's error
    spec = StudySpec.from_toml(SPECS / "tiny.toml")
    with pytest.raises(ClusterError, match=r"'10\.9\.8\.7:6379'.*ray start --head.*authentication"):
        run_study(spec, tmp_path / "s", backend=RayBackend(address="10.9.8.7:6379"), progress=False)


def test_the_cli_says_it_in_one_line_without_disks(monkeypatch, tmp_path, capsys):
    def refuse(address=None, **kwargs):
        raise ConnectionError(f"Failed to connect to Ray cluster at {address}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray_backend, "check_reachable", lambda *args: None)  # ray.init's error
    monkeypatch.setenv("RAY_ADDRESS", "10.9.8.7:6379")
    spec = str(SPECS / "tiny.toml")
    code = main(["study", "run", spec, "--folder", str(tmp_path / "s"), "--backend", "ray"])
    err = capsys.readouterr().err
    assert code == 2
    assert "'10.9.8.7:6379' (from RAY_ADDRESS)" in err and "authentication" in err
    assert "disk" not in err
