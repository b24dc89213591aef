"""An app process of the distributed test: increments a shared counter N times, each
under the drop-in FileLock of its own host's locks directory, with lockledger in
distributed mode (the registration is the grant across hosts).

argv: service_url locks_dir counter_path marker_dir rounds
Prints one JSON line: {"rounds": N, "overlaps": K}; exits 0 unless something failed.
"""

import json
import os
import sys
import time

import lockledger_client
from lockledger_client import FileLock


def main() -> int:
    url, locks_dir, counter, marker_dir, rounds = sys.argv[1:6]
    lockledger_client.configure(url, locks_dir=locks_dir, distributed=True,
                                register_timeout=2.0)
    overlaps = 0
    marker = os.path.join(marker_dir, "inside")
    for _ in range(int(rounds)):
        with FileLock(os.path.join(locks_dir, "dist1_messages.lock"), timeout=60,
                      operation="count"):
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.close(fd)
            except FileExistsError:
                overlaps += 1
            with open(counter) as f:
                n = int(f.read().strip() or "0")
            time.sleep(0.003)
            with open(counter, "w") as f:
                f.write(str(n + 1))
            try:
                os.unlink(marker)
            except FileNotFoundError:
                overlaps += 1
    print(json.dumps({"rounds": int(rounds), "overlaps": overlaps}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
