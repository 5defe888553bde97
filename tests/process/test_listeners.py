"""One listening socket per worker (``SO_REUSEPORT``): the kernel spreads connections over
the workers, a replacement worker takes over its predecessor's socket, and a port anyone
holds is still refused."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from api.serve import BindError, bind_listeners
from tests.process.serving import (
    requires_linux,
    served,
    socket_inodes,
    tcp_sockets,
)

pytestmark = requires_linux()


def _reuse_port(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)


def test_one_listening_socket_per_worker_on_one_port() -> None:
    listeners = bind_listeners("127.0.0.1", 0, 3, 16)
    try:
        ports = {sock.getsockname()[1] for sock in listeners}
        assert len(listeners) == 3 and len(ports) == 1
        assert all(_reuse_port(sock) == 1 for sock in listeners)
        (port,) = ports
        listening = [inode for inode, state in tcp_sockets(port).items() if state == "LISTEN"]
        assert len(listening) == 3
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        for sock in listeners:
            sock.close()


def test_a_single_worker_gets_a_plain_socket() -> None:
    (sock,) = bind_listeners("127.0.0.1", 0, 1, 16)
    with sock:
        assert _reuse_port(sock) == 0


def test_a_held_port_is_refused_even_to_a_reuse_port_group() -> None:
    """Without the plain bind first, a second service of the same user would join the
    first one's group and silently take a share of its connections."""
    first = bind_listeners("127.0.0.1", 0, 2, 16)
    try:
        port = first[0].getsockname()[1]
        with pytest.raises(BindError, match=rf"cannot listen on 127\.0\.0\.1:{port}"):
            bind_listeners("127.0.0.1", port, 2, 16)
        with pytest.raises(BindError):
            bind_listeners("127.0.0.1", port, 1, 16)
    finally:
        for sock in first:
            sock.close()
    with socket.socket() as plain:  # held without SO_REUSEPORT: refused as well
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        with pytest.raises(BindError):
            bind_listeners("127.0.0.1", plain.getsockname()[1], 2, 16)


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 support")
    try:
        listeners = bind_listeners("::1", 0, 2, 16)
    except BindError as exc:
        pytest.skip(f"no IPv6 loopback on this machine: {exc}")
    try:
        assert {sock.family for sock in listeners} == {socket.AF_INET6}
        assert len({sock.getsockname()[1] for sock in listeners}) == 1
    finally:
        for sock in listeners:
            sock.close()


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        bind_listeners("127.0.0.1", 0, 0, 16)


def _listening_inode(pid: int, port: int) -> int:
    listening = {inode for inode, state in tcp_sockets(port).items() if state == "LISTEN"}
    held = socket_inodes(pid) & listening
    assert len(held) == 1, (pid, held, listening)
    return held.pop()


@pytest.mark.slow
def test_workers_share_a_burst_and_replacements_keep_their_sockets(
        tmp_path: Path) -> None:
    """Two workers, 64 connections opened at once (what wrk or a proxy's pool does): with
    one shared socket the first worker awake could accept all of them; with a socket each,
    the kernel's hash gives each worker about half (fewer than 12 of 64 has a probability
    under 1e-6). A SIGKILLed worker's replacement serves the same socket, and so do the
    workers a SIGHUP brings in."""
    with served("--workers", "2", env={"SENDWISE_DATA_DIR": str(tmp_path)}) as server:
        workers = server.wait_workers(2)
        sockets_of = {pid: _listening_inode(pid, server.port) for pid in workers}
        assert len(set(sockets_of.values())) == 2

        connections = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
                       for _ in range(64)]
        try:
            for conn in connections:
                conn.sendall(b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n")
            for conn in connections:
                assert conn.recv(64).startswith(b"HTTP/1.1 200"), server.describe()
            established = {inode for inode, state in tcp_sockets(server.port).items()
                           if state == "ESTABLISHED"}
            served_by = {pid: len(socket_inodes(pid) & established) for pid in workers}
            assert sum(served_by.values()) == 64, served_by
            assert min(served_by.values()) >= 12, served_by
        finally:
            for conn in connections:
                conn.close()

        victim, survivor = workers
        os.kill(victim, signal.SIGKILL)
        replacement = server.wait_workers(3)[2]
        assert replacement not in workers
        assert _listening_inode(replacement, server.port) == sockets_of[victim]
        assert _listening_inode(survivor, server.port) == sockets_of[survivor]
        assert any('"worker_died"' in line and f'"pid": {victim}' in line
                   for line in server.stdout.lines), server.describe()
        assert server.request("GET", "/health/ready")[0] == 200

        # SIGHUP replaces the workers one by one, each replacement on its slot's socket
        os.kill(server.pid, signal.SIGHUP)
        rolled = server.wait_workers(5)[3:]
        assert {_listening_inode(pid, server.port) for pid in rolled} == set(
            sockets_of.values())
        assert server.request("GET", "/health/ready")[0] == 200


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_refuses_a_port_in_use_before_anything_starts(tmp_path: Path,
                                                            workers: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with served("--workers", workers, env={"SENDWISE_DATA_DIR": str(tmp_path)},
                    port=port) as server:
            assert server.proc.wait(timeout=60) == 1, server.describe()
            assert server.stderr.wait(
                lambda lines: any(f"cannot listen on 127.0.0.1:{port}" in line
                                  for line in lines), 5), server.describe()
    assert not (tmp_path / "redis").exists()  # refused before the embedded Redis started
