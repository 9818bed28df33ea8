#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Convergence on IoT Hub, twind against Microsoft's Node device SDK running the tutorial's
device app (azure-sdk-device.js), both on the IoT Hub emulator in one run, and the memory of
both processes. Not a pass/fail test: see docs/performance.md ("Azure IoT Hub").

Convergence is timed by the emulator's own clock: from the desired notification it sent to
the device to the reported PATCH that answers that $version with success (its request log,
millisecond resolution). The two devices take turns, one update each per round, so that both
see the same machine.

    /usr/bin/python3 tests/bench/azure-bench.py --twind build/src/twind/twind [--rounds 200]
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from azurehub import AzureHub  # noqa: E402

NODE = "node"


def when(entry):
    return datetime.datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))


def answers(entry, version):
    """Whether this reported PATCH says success for version. twind sends merge patches, so a
    state that stayed "success" is not in it; with no apply command it reports no "pending"."""
    st = (entry.get("body") or {}).get("twinStatus") or {}
    return st.get("state", "success") == "success" and st.get("desiredVersion") == version


def converge(hub, device, round_no, timeout=10.0):
    """One desired change to device; its convergence in ms, by the emulator's clock."""
    since = hub.mark()
    version = hub.set_desired(device, {"configId": round_no, "sendFrequency": f"{round_no}s"})[
        "version"]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        entries = hub.requests(since)
        sent = [e for e in entries if e["kind"] == "desired-notification"
                and e.get("deviceId") == device and e.get("version") == version]
        done = [e for e in entries if e["kind"] == "reported" and e.get("deviceId") == device
                and answers(e, version)]
        if sent and done:
            return (when(done[0]) - when(sent[0])).total_seconds() * 1000.0
        time.sleep(0.01)
    raise RuntimeError(f"{device} did not converge on desired $version {version}")


def memory_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out


def wait_line(proc, want, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if want in line:
            return
        if not line and proc.poll() is not None:
            raise RuntimeError(f"the process exited with {proc.returncode}")
    raise RuntimeError(f"no '{want}' line in {timeout} s")


def percentile(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--twind", required=True)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()

    d = tempfile.mkdtemp(prefix="azbench")
    hub = AzureHub(os.path.join(d, "hub"))
    hub.start()
    procs = []
    shm = d
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
        since = hub.mark()
        agents = {}
        # twind as it runs (its state saved to this disk before each report), and the same
        # with its state on tmpfs, where fsync costs nothing: the rest is the protocol path.
        shm = tempfile.mkdtemp(prefix="azbench", dir="/dev/shm")
        for name, state in (("twind", os.path.join(d, "state")),
                            ("twind-tmpfs", os.path.join(shm, "state"))):
            device = f"{name}-dev"
            hub.add_device(device)
            conn = os.path.join(d, f"{name}.conn")
            with open(conn, "w") as f:
                f.write(hub.device_connection_string(device) + "\n")
            os.chmod(conn, 0o600)
            conf = os.path.join(d, f"{name}.conf")
            with open(conf, "w") as f:
                f.write(f"[broker]\ndialect = azure\ncafile = {hub.ca}\n"
                        f"[azure]\nconnection_string_file = {conn}\n"
                        f"[state]\ndirectory = {state}\n"
                        f"[control]\nsocket = {d}/{name}.sock\n")
            agents[name] = subprocess.Popen([args.twind, "-c", conf], stdout=subprocess.DEVNULL,
                                            stderr=open(os.path.join(d, f"{name}.log"), "w"),
                                            env=env)
            procs.append(agents[name])
        twind = agents["twind"]
        hub.add_device("sdk-dev")
        sdk_env = dict(env, AZURE_CS=hub.device_connection_string("sdk-dev"), AZURE_CA=hub.ca)
        sdk = subprocess.Popen([NODE, os.path.join(HERE, "azure-sdk-device.js")],
                               stdout=subprocess.PIPE, stderr=open(os.path.join(d, "sdk.log"), "w"),
                               text=True, env=sdk_env)
        procs.append(sdk)
        wait_line(sdk, "ready")
        for name in agents:
            hub.wait_requests("get", since=since,
                              where=lambda e, n=name: e.get("deviceId") == f"{n}-dev")

        times = {"twind": [], "twind-tmpfs": [], "sdk": []}
        for i in range(1, args.warmup + args.rounds + 1):
            for name, device in (("twind", "twind-dev"), ("twind-tmpfs", "twind-tmpfs-dev"),
                                 ("sdk", "sdk-dev")):
                ms = converge(hub, device, i)
                if i > args.warmup:
                    times[name].append(ms)
        mem = {"twind": memory_kib(twind.pid), "twind-tmpfs": memory_kib(agents["twind-tmpfs"].pid),
               "sdk": memory_kib(sdk.pid)}

        print(f"Azure IoT Hub emulator, {args.rounds} rounds after {args.warmup} warm-up, "
              f"{datetime.date.today()}")
        print()
        print("| device | p50 ms | p90 ms | p99 ms | max ms | RSS MiB | peak RSS MiB |")
        print("|---|---|---|---|---|---|---|")
        for name, label in (("twind", "twind (azure dialect)"),
                            ("twind-tmpfs", "twind, state on tmpfs"),
                            ("sdk", "Node SDK tutorial device app")):
            t = times[name]
            print(f"| {label} | {statistics.median(t):.1f} | {percentile(t, 90):.1f} | "
                  f"{percentile(t, 99):.1f} | {max(t):.1f} | {mem[name]['VmRSS'] / 1024:.1f} | "
                  f"{mem[name]['VmHWM'] / 1024:.1f} |")
        ratio = mem["twind"]["VmHWM"] / mem["sdk"]["VmHWM"]
        print()
        print(f"twind's peak RSS is {ratio * 100:.1f} % of the SDK app's; its median convergence "
              f"is {statistics.median(times['twind']) / statistics.median(times['sdk']):.2f}x "
              f"the SDK app's.")
        print(json.dumps({"times": {k: statistics.median(v) for k, v in times.items()},
                          "memory_kib": mem}), file=sys.stderr)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        hub.stop()
        subprocess.run(["rm", "-rf", shm, d], check=False)


if __name__ == "__main__":
    main()
