"""Several hosts on one machine for cluster tests: Linux network namespaces on a bridge, each with its own address.

Each host is a network namespace (``ip netns``) with a veth pair into a bridge the harness creates; the root namespace
is the bridge's gateway and forwards chosen ports of its bridge address to services on its loopback (PostgreSQL,
Redis, an MLflow server), so every host reaches them as it would a service on the cluster network. The hosts share
the file system, as HPC nodes share a parallel file system; a host can be given a private view of one directory
(a bind mount in its own mount namespace) to show what happens without one.

Ray nodes are started with ``ray start`` inside a host and stopped by killing the processes of that host's
namespace (never ``ray stop``, which would stop every Ray on the machine). Traffic goes only to the namespaces made
here and to loopback. Used by tests/test_cluster.py and benchmarks/orchestration.py.
"""

from __future__ import annotations

import os
import random
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # a dead node is noticed in about 3 s instead of 15-30 s
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_health_check_initial_delay_ms": "1000",
}


def netns_available() -> str | None:
    """None when this process can make network namespaces and bridges, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip command is missing"
    probe = f"isprobe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _forget_redis_keys(pattern: str, port: int = 6379) -> None:
    """Delete the keys the test's GCS left in the machine's Redis (RESP over a socket; no client library needed)."""

    def command(sock, *args: str):
        sock.sendall(f"*{len(args)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args))
        return _read_resp(sock.makefile("rb"))

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            cursor = "0"
            while True:
                cursor, keys = command(sock, "SCAN", cursor, "MATCH", pattern, "COUNT", "1000")
                if keys:
                    command(sock, "DEL", *keys)
                if cursor == "0":
                    break
    except OSError:
        pass


def _read_resp(stream):
    line = stream.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind in (b"+", b"-"):
        return rest.decode()
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else stream.read(n + 2)[:-2].decode()
    if kind == b"*":
        return [_read_resp(stream) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected Redis reply {line!r}")


def _free_subnet() -> str:
    """A 10.x.y.0/24 no interface or route of this machine uses."""
    used = _ip("-4", "route").stdout + _ip("-4", "addr").stdout
    for _ in range(200):
        prefix = f"10.{random.randint(200, 254)}.{random.randint(0, 254)}"
        if f"{prefix}." not in used:
            return prefix
    raise RuntimeError("no free 10.x.y.0/24 subnet for the test hosts")


class _Forwarder:
    """TCP forwarding from (listen address, port) to 127.0.0.1:target, one thread, for the cluster's services."""

    def __init__(self, listen_ip: str, target_port: int, listen_port: int | None = None):
        self.target_port = target_port
        self.server = socket.create_server((listen_ip, listen_port or 0))
        self.port = self.server.getsockname()[1]
        self.server.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.server, selectors.EVENT_READ, None)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name=f"forward-{target_port}")
        self.thread.start()

    def _loop(self) -> None:
        peers: dict[socket.socket, socket.socket] = {}
        while not self.stopped.is_set():
            for key, _ in self.selector.select(timeout=0.2):
                sock = key.fileobj
                if sock is self.server:
                    try:
                        client, _ = self.server.accept()
                        upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                    except OSError:
                        continue
                    for s in (client, upstream):
                        s.setblocking(False)
                        self.selector.register(s, selectors.EVENT_READ, None)
                    peers[client], peers[upstream] = upstream, client
                    continue
                other = peers.get(sock)
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data and other is not None:
                    try:
                        other.setblocking(True)
                        other.sendall(data)
                        other.setblocking(False)
                        continue
                    except OSError:
                        pass
                for s in (sock, other):
                    if s is not None and s in peers:
                        self.selector.unregister(s)
                        peers.pop(s, None)
                        s.close()
        for s in list(peers):
            s.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.server.close()


@dataclass
class Host:
    """One host: its own network namespace, and (once its first long-lived process runs) its own PID and mount
    namespaces, so that its processes see only each other, as on a separate machine (Ray finds its local node by
    looking at the processes it can see)."""

    name: str
    namespace: str
    ip: str
    temp_dir: Path
    private: dict[str, str] = field(default_factory=dict)  # directory -> what this host sees there instead
    ray: subprocess.Popen | None = None
    init_pid: int | None = None  # the host's "pid 1", as this machine numbers it

    def pids(self) -> list[int]:
        out = _ip("netns", "pids", self.namespace, check=False).stdout.split()
        return [int(p) for p in out]

    def alive(self) -> bool:
        return self.init_pid is not None and Path(f"/proc/{self.init_pid}").exists()

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run on this host: inside its namespaces when it is up, else as its first process."""
        if self.alive():
            return ["nsenter", "-t", str(self.init_pid), "-n", "-p", "-m", "--", *argv]
        mounts = "".join(f"mount --bind {src!s} {dst!s} && " for dst, src in self.private.items())
        return ["ip", "netns", "exec", self.namespace, "unshare", "--pid", "--fork", "--mount-proc",
                "--propagation", "private", "sh", "-c", f'{mounts}exec "$@"', "host", *argv]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process started on a host and everything it started (nsenter's child is the real command)."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


class NetCluster:
    """Hosts on a private bridge; ``ray start`` on them; services forwarded from the machine's loopback."""

    def __init__(self, hosts: list[str], *, work_dir: Path, env: dict[str, str] | None = None):
        self.tag = f"{os.getpid() % 10000}{random.randint(0, 99):02d}"
        self.prefix = _free_subnet()
        self.gateway = f"{self.prefix}.1"
        self.bridge = f"isb{self.tag}"
        self.work_dir = work_dir
        # token authentication with the cluster's own token (a token file another Ray left in ~/.ray would not match)
        self.token = secrets.token_hex(32)
        self.env = {**os.environ, **RAY_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, **(env or {})}
        self.hosts: dict[str, Host] = {}
        self.forwarders: list[_Forwarder] = []
        self.head: Host | None = None
        self.ray_port = 6379
        self.redis_namespace: str | None = None
        self._made: list[tuple[str, ...]] = []
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append(("link", "delete", self.bridge))
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, name in enumerate(hosts):
                self._add_host(name, f"{self.prefix}.{i + 2}", i)
        except BaseException:
            self.close()
            raise

    def _add_host(self, name: str, ip: str, index: int) -> None:
        namespace = f"ionscreen-{self.tag}-{name}"
        veth = f"isv{self.tag}{index}"
        _ip("netns", "add", namespace)
        self._made.append(("netns", "delete", namespace))
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", namespace, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        temp_dir = Path(f"/tmp/isr{self.tag}{name}")  # short: Ray's unix sockets live there (107-byte limit)
        self.hosts[name] = Host(name, namespace, ip, temp_dir)

    # services -----------------------------------------------------------------------------------------------------
    def forward(self, local_port: int, listen_port: int | None = None) -> str:
        """Make 127.0.0.1:local_port of this machine reachable from every host; returns 'gateway:port'."""
        fwd = _Forwarder(self.gateway, local_port, listen_port)
        self.forwarders.append(fwd)
        return f"{self.gateway}:{fwd.port}"

    # processes ----------------------------------------------------------------------------------------------------
    def popen(self, host: str, argv: list[str], *, env: dict | None = None, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.hosts[host].wrap(argv), env={**self.env, **(env or {})}, **kwargs)

    def run(self, host: str, argv: list[str], *, env: dict | None = None, timeout: float = 600,
            **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.hosts[host].wrap(argv), env={**self.env, **(env or {})}, timeout=timeout,
                              capture_output=True, text=True, **kwargs)

    @property
    def address(self) -> str:
        assert self.head is not None, "no head started"
        return f"{self.head.ip}:{self.ray_port}"

    def start_head(self, host: str, *, cpus: int = 0, redis: str | None = None, namespace: str | None = None,
                   env: dict | None = None) -> None:
        """``ray start --head`` on ``host``; with ``redis`` (host:port) the GCS keeps its state there (GCS fault
        tolerance), under ``namespace``."""
        extra = dict(env or {})
        if redis:
            self.redis_namespace = namespace or f"ionscreen-test-{self.tag}"
            extra |= {"RAY_REDIS_ADDRESS": redis, "RAY_external_storage_namespace": self.redis_namespace}
        self.head = self.hosts[host]
        self._start_ray(host, ["--head", "--port", str(self.ray_port), "--include-dashboard", "false"], cpus, extra)

    def start_worker(self, host: str, *, cpus: int = 1, env: dict | None = None) -> None:
        self._start_ray(host, ["--address", self.address], cpus, env or {})

    def _start_ray(self, host: str, args: list[str], cpus: int, env: dict) -> None:
        h = self.hosts[host]
        ray_bin = str(Path(sys.executable).parent / "ray")
        argv = [ray_bin, "start", *args, "--node-ip-address", h.ip, "--num-cpus", str(cpus),
                "--temp-dir", str(h.temp_dir), "--disable-usage-stats", "--block"]
        log = open(self.work_dir / f"ray-{host}.log", "ab")
        h.ray = self.popen(host, argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # unshare's child is the host's pid 1
            children = descendants(h.ray.pid)
            if children:
                h.init_pid = children[0]
                return
            time.sleep(0.02)
        raise RuntimeError(f"host {host} did not start: {(self.work_dir / f'ray-{host}.log').read_text()[-2000:]}")

    def wait_for_nodes(self, n: int, timeout: float = 90) -> list[dict]:
        """Wait until ``n`` nodes are alive (asked from the head's host); returns them."""
        deadline = time.monotonic() + timeout
        script = ("import json, ray; ray.init(address=%r, log_to_driver=False, logging_level='ERROR');"
                  "print('NODES ' + json.dumps([{'ip': x['NodeManagerAddress'], 'cpus': x['Resources'].get('CPU', 0)}"
                  " for x in ray.nodes() if x['Alive']]))") % self.address
        last = ""
        while time.monotonic() < deadline:
            done = self.run(self.head.name, [sys.executable, "-c", script], timeout=60)
            if done.returncode == 0:
                import json

                # Ray may print log lines to stdout around ours: take the marked line
                answers = [line[len("NODES "):] for line in done.stdout.splitlines() if line.startswith("NODES ")]
                if not answers:
                    last = f"no node list in the output: {done.stdout[-500:]!r}"
                    time.sleep(1)
                    continue
                nodes = json.loads(answers[-1])
                if len(nodes) >= n:
                    return nodes
                last = f"{len(nodes)} alive"
            else:
                last = done.stderr[-500:]
            time.sleep(1)
        raise TimeoutError(f"the cluster did not reach {n} nodes in {timeout:.0f} s: {last}")

    def processes(self, host: str, name: str) -> list[int]:
        """Pids of ``host``'s processes whose command name is ``name`` (e.g. raylet, gcs_server)."""
        out = []
        for pid in self.hosts[host].pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                    out.append(pid)
            except OSError:
                continue
        return out

    def kill_raylet(self, host: str) -> int:
        """SIGKILL ``host``'s raylet: the node dies (its workers follow their raylet). Returns the pid killed."""
        pids = self.processes(host, "raylet")
        if not pids:
            raise RuntimeError(f"host {host} runs no raylet")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        self.stop_host(host)  # what the raylet leaves behind exits too: the host is down
        return pids[0]

    def stop_host(self, host: str, timeout: float = 20) -> None:
        """SIGKILL every process of ``host`` and wait until none is left."""
        h = self.hosts[host]
        deadline = time.monotonic() + timeout
        while (pids := h.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        if h.ray is not None:
            try:
                h.ray.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            h.ray = None
        h.init_pid = None
        shutil.rmtree(h.temp_dir, ignore_errors=True)

    def close(self) -> None:
        for name in list(self.hosts):
            try:
                self.stop_host(name, timeout=10)
            except Exception:  # noqa: BLE001 - teardown goes on
                pass
        for fwd in self.forwarders:
            fwd.close()
        if self.redis_namespace:
            _forget_redis_keys(f"RAY{self.redis_namespace}@*")
        for args in reversed(self._made):
            _ip(*args, check=False)
        self._made.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
