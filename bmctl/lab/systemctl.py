"""`systemctl` on a lab node (LAB ONLY): hands its arguments to the node's unit supervisor
(bmctl/lab/systemd.py) over its Unix socket and prints the answer, with systemctl's exit codes."""
from __future__ import annotations

import json
import socket
import sys

from bmctl.lab.systemd import SOCKET, read_message


def main(argv: list[str]) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(SOCKET)
    except OSError as exc:
        print(f"System has not been booted with the lab's unit supervisor ({SOCKET}: {exc.strerror}).",
              file=sys.stderr)
        return 1
    with sock:
        sock.sendall(json.dumps(argv).encode() + b"\n")
        answer = read_message(sock)
    sys.stdout.write(answer["out"])
    return answer["rc"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
