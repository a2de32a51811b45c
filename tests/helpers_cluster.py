"""Real Ray clusters on 127.0.0.1 for tests, each stopped by the ids of the processes it started.

`RayHead`: `ray start --head --block` with the dashboard and job server on free ports (the Jobs API).
`python tests/helpers_cluster.py` (run as a subprocess, so the test process's own Ray is never
touched): a `ray.cluster_utils.Cluster` of a CPU-less head and worker nodes, driven through stdin:
`add` starts a worker node, `kill N` kills worker N's processes without grace (a lost node),
`stop` shuts everything down. It prints one JSON line per command (the first: the GCS address).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import psutil


def token_env(env: dict) -> dict:
    """`env` with Ray's token authentication on and a fresh token of this test's own (never ~/.ray)."""
    import secrets

    return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_tree(pid: int, grace: float = 10.0, procs: list | None = None) -> None:
    """SIGTERM `pid` and every process it started (or `procs`, collected earlier), then SIGKILL what is left."""
    procs = list({p.pid: p for p in [*(procs or []), *descendants(pid)]}.values())
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


class RayHead:
    """`with RayHead(env) as head:` a one-node Ray cluster; `head.dashboard` is the Jobs API address and
    `head.headers` authenticate a client (Ray 2.60 turns token authentication on by default)."""

    def __init__(self, env: dict, num_cpus: int = 2):
        self.env, self.num_cpus = token_env(env), num_cpus
        self.headers = {"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"}
        self.temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths have a length limit

    def __enter__(self):
        ports = {k: free_port() for k in ("port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                          "metrics-export-port", "runtime-env-agent-port", "ray-client-server-port",
                                          "node-manager-port", "object-manager-port")}
        ray = os.path.join(os.path.dirname(sys.executable), "ray")
        cmd = [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
               "--include-dashboard=true", f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
               *(f"--{k}={v}" for k, v in ports.items())]
        self.log = open(os.path.join(self.temp_dir, "ray-start.log"), "wb")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        self.address = f"127.0.0.1:{ports['port']}"
        self.dashboard = f"http://127.0.0.1:{ports['dashboard-port']}"
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {open(self.log.name).read()[-3000:]}")
            try:
                request = urllib.request.Request(f"{self.dashboard}/api/version", headers=self.headers)
                if urllib.request.urlopen(request, timeout=2).status == 200:
                    return self
            except Exception:
                time.sleep(1)
        self.__exit__()
        raise RuntimeError("the Ray head's job server did not come up in 120 s")

    def __exit__(self, *exc):
        stop_tree(self.proc.pid)
        self.log.close()
        import shutil

        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _serve(num_workers: int, cpus: float) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=cpus) for _ in range(num_workers)]
    cluster.wait_for_nodes()
    print(json.dumps({"address": cluster.address}), flush=True)
    try:
        for line in sys.stdin:
            cmd = line.split()
            if not cmd or cmd[0] == "stop":
                break
            if cmd[0] == "kill":
                cluster.remove_node(workers[int(cmd[1])], allow_graceful=False)
            elif cmd[0] == "add":
                workers.append(cluster.add_node(num_cpus=cpus))
            print(json.dumps({"done": cmd}), flush=True)
    finally:
        cluster.shutdown()


class MultiNode:
    """`with MultiNode(env, workers=2) as c:` the subprocess cluster above; `c.address` for RAY_ADDRESS."""

    def __init__(self, env: dict, workers: int = 2, cpus: float = 2):
        self.proc = subprocess.Popen([sys.executable, __file__, str(workers), str(cpus)], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def __enter__(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the multi-node cluster did not start")
        self.address = json.loads(line)["address"]
        return self

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        json.loads(self.proc.stdout.readline())

    def __exit__(self, *exc):
        started = descendants(self.proc.pid)  # before `stop`: Ray's processes outlive a parent that dies
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except Exception:
            pass
        stop_tree(self.proc.pid, procs=started)


if __name__ == "__main__":
    _serve(int(sys.argv[1]), float(sys.argv[2]))
