"""The Ray engine is quiet unless -vv: Ray's own log lines are hidden, and a worker's failure is one line.

No Ray instance is started here (that takes seconds): ``_connect`` is handed a stand-in for the ``ray`` module, and
the failures are Ray's own exception classes as a worker's failure reaches the driver.
"""

from __future__ import annotations

import logging
import os
import types

import pytest

from vlmcls import distributed
from vlmcls.errors import ModelLoadError, WorkerError


class _FakeRay:
    """Records how ray.init was called and what the C++ side would read from the environment then."""

    def __init__(self):
        self.calls: list[dict] = []
        self.data = types.SimpleNamespace(DataContext=types.SimpleNamespace(
            get_current=lambda: types.SimpleNamespace(enable_progress_bars=True)))

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs):
        self.calls.append({**kwargs, "backend_level": os.environ.get("RAY_BACKEND_LOG_LEVEL")})


@pytest.fixture
def fake_ray(monkeypatch):
    monkeypatch.delenv("RAY_BACKEND_LOG_LEVEL", raising=False)
    for name in ("ray", "ray.data"):  # _connect sets these; put them back after the test
        monkeypatch.setattr(logging.getLogger(name), "level", logging.getLogger(name).level)
    return _FakeRay()


def test_a_local_instance_starts_without_ray_s_own_log_lines(fake_ray, monkeypatch):
    monkeypatch.setattr(distributed.log, "level", logging.WARNING)

    distributed._connect(fake_ray, None)

    (call,) = fake_ray.calls
    assert call["log_to_driver"] is False and call["include_dashboard"] is False
    assert call["logging_level"] == logging.CRITICAL  # the token-auth notice is a WARNING, Data's plan INFO
    assert call["backend_level"] == "fatal"  # the C++ "E … core_worker.cc … max_restarts" lines
    assert "RAY_BACKEND_LOG_LEVEL" not in os.environ  # only while Ray starts: nothing else in this process sees it
    assert logging.getLogger("ray.data").level == logging.CRITICAL


def test_a_local_instance_listens_on_this_machine_only_and_a_cluster_keeps_its_own_address(fake_ray):
    distributed._connect(fake_ray, None)
    assert fake_ray.calls[-1]["_node_ip_address"] == "127.0.0.1"  # not reachable from the network
    distributed._connect(fake_ray, "auto")
    assert "_node_ip_address" not in fake_ray.calls[-1] and fake_ray.calls[-1]["address"] == "auto"


def test_with_vv_ray_prints_everything_and_a_level_the_user_set_is_kept(fake_ray, monkeypatch):
    monkeypatch.setattr(distributed.log, "level", logging.DEBUG)
    distributed._connect(fake_ray, None)
    assert fake_ray.calls[-1] == {"address": None, "backend_level": None, "_node_ip_address": "127.0.0.1"}

    monkeypatch.setattr(distributed.log, "level", logging.WARNING)
    monkeypatch.setenv("RAY_BACKEND_LOG_LEVEL", "debug")
    distributed._connect(fake_ray, None)
    assert fake_ray.calls[-1]["backend_level"] == "debug" and os.environ["RAY_BACKEND_LOG_LEVEL"] == "debug"


# What a failing map_batches function reaches the driver as (Ray Data 2.x): the worker's traceback, then Ray
# Data's own UserCodeException chained after it, coloured for a terminal.
_DATA_TRACEBACK = """Traceback (most recent call last):
  File "/site-packages/vlmcls/ray_workers.py", line 210, in score_batch
    raise ValueError("boom in a worker")
ValueError: boom in a worker

The above exception was the direct cause of the following exception:

\x1b[36mray::MapBatches(score_batch)()\x1b[39m (pid=18407, ip=192.0.2.2)
ray.exceptions.UserCodeException: UDF failed to process a data block.
Failed to apply UDF transform after 1/1 attempts (total backoff 0.0s).
To change retry attempts, backoff, or which errors are retried, configure `ray.data.DataContext.get_current()`."""


def test_a_worker_failure_is_one_line_ending_with_the_worker_s_error():
    ray = pytest.importorskip("ray")
    try:
        raise ray.exceptions.UserCodeException("UDF failed to process a data block.")
    except ray.exceptions.UserCodeException as cause:
        failure = ray.exceptions.RayTaskError("MapBatches(score_batch)", _DATA_TRACEBACK, cause)

    with pytest.raises(WorkerError) as info:
        with distributed._worker_start_failures(ray):
            raise failure

    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message
    assert message == "a Ray worker failed: ValueError: boom in a worker. Run with -vv to see Ray's logs."
    assert info.value.__cause__ is failure  # the whole of Ray's text stays reachable (-vv, the traceback file)


def test_an_encoder_actor_that_cannot_start_is_still_a_model_load_error():
    ray = pytest.importorskip("ray")

    class InitFailed(ray.exceptions.ActorDiedError):  # as Ray reports an actor whose __init__ raised
        actor_init_failed = True

        def __str__(self):
            return "The actor died because of an error raised in its creation task\nModelLoadError: other weights."

    died = InitFailed()
    with pytest.raises(ModelLoadError, match=r"could not start on a Ray worker"):
        with distributed._worker_start_failures(ray):
            raise died
