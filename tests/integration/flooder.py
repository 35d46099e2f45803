"""Open idle TCP connections and hold them: ``python flooder.py PORT COUNT SOURCE...``.

Run as a process of its own, so that its descriptors count against its own limit, not the
node's.  Connects COUNT times to 127.0.0.1:PORT, binding to the SOURCE addresses in turn,
never sends a byte, prints the number held, and closes them all when stdin closes.
"""

from __future__ import annotations

import socket
import sys


def main(argv: list[str]) -> None:
    port, count, sources = int(argv[0]), int(argv[1]), argv[2:]
    held = []
    for i in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(60)
        sock.bind((sources[i % len(sources)], 0))
        sock.connect(("127.0.0.1", port))
        held.append(sock)
    print(len(held), flush=True)
    sys.stdin.read()
    for sock in held:
        sock.close()


if __name__ == "__main__":
    main(sys.argv[1:])
