"""The service as processes: workers die with their supervisor, one service per data
directory, no unauthenticated service on a public address."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from api.serve import BindRefusedError, check_bind, is_loopback
from api.settings import Settings
from models.artifact import read_manifest
from models.bundled_model import BUNDLED_MODEL_DIR
from tests.process.serving import (
    descendants,
    port_is_free,
    requires_linux,
    served,
    wait_gone,
)

DEATH_DEADLINE = 20.0


@requires_linux()
@pytest.mark.slow
def test_killed_supervisor_takes_its_workers_along_and_frees_port_and_data_dir(
        tmp_path: Path) -> None:
    """kill -9 of a 2-worker supervisor: both workers, the resource tracker and the embedded
    redis-server exit, the port can be bound again, and a new service starts on the same
    data directory and port. A second service on that directory meanwhile is refused."""
    env = {"SENDWISE_DATA_DIR": str(tmp_path)}
    with served("--workers", "2", env=env) as first:
        workers = set(first.wait_workers(2))
        tree = descendants(first.pid)
        assert workers <= tree
        assert len(tree) >= 4, tree  # 2 workers, redis-server, multiprocessing's tracker
        status, _ = first.request("GET", "/health/ready")
        assert status == 200

        with served(env=env) as second:
            assert second.proc.wait(timeout=60) == 1, second.describe()
            assert second.stderr.wait(
                lambda lines: any("is in use by another sendwise service" in line
                                  for line in lines), 5), second.describe()

        os.kill(first.pid, signal.SIGKILL)
        first.proc.wait(timeout=10)
        assert wait_gone(tree, DEATH_DEADLINE) == set(), first.describe()
        assert port_is_free(first.port)
        port = first.port

    with served(env=env, port=port) as again:
        again.wait_workers(1)
        status, body = again.request("GET", "/health/ready")
        # a fresh install scores with the bundled model
        bundled = read_manifest(BUNDLED_MODEL_DIR).model_version
        assert (status, body) == (200, {"status": "ok", "model_version": bundled})


def test_non_loopback_without_keys_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with served("--host", "0.0.0.0", env={"SENDWISE_DATA_DIR": str(tmp_path)}) as server:  # noqa: S104
        assert server.proc.wait(timeout=60) == 2, server.describe()
        assert server.stderr.wait(
            lambda lines: any("refusing to serve on 0.0.0.0 without authentication" in line
                              for line in lines), 5)
        assert port_is_free(server.port)
    assert not (tmp_path / "redis").exists()  # refused before the embedded Redis started


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_needs_no_keys(host: str) -> None:
    assert check_bind(host, Settings(), insecure_no_auth=False) is None
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "192.168.0.1"])  # noqa: S104
def test_public_bind_needs_keys_or_the_loud_flag(host: str) -> None:
    with pytest.raises(BindRefusedError, match="--insecure-no-auth"):
        check_bind(host, Settings(), insecure_no_auth=False)
    assert check_bind(host, Settings(api_keys={"k": "t"}), insecure_no_auth=False) is None
    warning = check_bind(host, Settings(), insecure_no_auth=True)
    assert warning is not None and "WITHOUT AUTHENTICATION" in warning


def test_worker_exits_when_orphaned_before_arming_the_death_signal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The race PR_SET_PDEATHSIG alone misses: the supervisor died before the worker armed
    it. A forked child that believes its supervisor is a pid other than its parent exits
    with status 1 instead of serving."""
    from api.serve import SUPERVISOR_PID_ENV, prepare_worker

    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            prepare_worker(Settings(log_level="error"),
                           env={SUPERVISOR_PID_ENV: str(os.getppid() + 1_000_000)})
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1


def test_socket_helper_sanity() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        assert not port_is_free(s.getsockname()[1])


def test_a_second_embedded_redis_on_one_data_dir_is_refused_at_once(tmp_path: Path) -> None:
    """The lock alone, without a service around it: the holder is alive, so no waiting."""
    from api.redis_server import LOCK_FILE, EmbeddedRedis, EmbeddedRedisError

    with EmbeddedRedis(data_dir=tmp_path, lock_wait=30) as first:
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(EmbeddedRedisError, match="is in use by another sendwise service"):
            EmbeddedRedis(data_dir=tmp_path, lock_wait=30).start()
        assert first.pid is not None
    with EmbeddedRedis(data_dir=tmp_path) as again:  # released on stop
        assert again.pid is not None
