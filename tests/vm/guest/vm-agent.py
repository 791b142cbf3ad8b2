#!/usr/bin/python3
"""The test harness's command runner inside the guest (not part of usbagent).

Reads one JSON request per line from a virtio serial port and answers each with one JSON
line: {"id", "rc", "out", "err"} (output base64). Each request runs in its own thread, so a
long command does not block a short one. A port with no tty line discipline carries the
bytes as they are: no echo, no prompts, no markers to parse out of a console.
"""

import base64
import json
import subprocess
import threading
import time
from pathlib import Path

PORT = "/dev/virtio-ports/vm-agent"


def run(req, out, lock):
    try:
        proc = subprocess.run(
            ["/bin/bash", "-c", req["cmd"]],
            input=base64.b64decode(req.get("stdin", "")),
            capture_output=True,
            timeout=req.get("timeout", 120),
            check=False,
        )
        reply = {"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr}
    except subprocess.TimeoutExpired as exc:
        reply = {"rc": -1, "out": exc.stdout or b"", "err": (exc.stderr or b"") + b"\n[timeout]"}
    reply = {
        k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in reply.items()
    }
    reply["id"] = req["id"]
    data = memoryview((json.dumps(reply) + "\n").encode())
    with lock:
        while data:  # a port write may take only part of a long line
            data = data[out.write(data) :]
        out.flush()


def main():
    lock = threading.Lock()
    # udev creates the port's name link; virtio ports have no systemd device unit to wait on.
    while not Path(PORT).exists():
        time.sleep(0.1)
    # A virtio port can be opened only once: one read-write file for both directions.
    with open(PORT, "r+b", buffering=0) as port:
        port.write(b'{"id": 0, "ready": true}\n')
        buf = b""
        while True:
            chunk = port.read(65536)
            if not chunk:  # the host side is not connected (yet)
                time.sleep(0.1)
                continue
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    req = json.loads(line)
                    threading.Thread(target=run, args=(req, port, lock), daemon=True).start()


main()
