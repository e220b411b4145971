"""The smallest useful persistent worker: the floor for what a node agent can cost.

Runs on the node as `python3 -c SOURCE`. Reads `ID<TAB>COMMAND` lines on stdin, runs
each as `/bin/sh -c COMMAND` at once (the client bounds how many are in flight), and
writes `ID<TAB>EXIT` when it ends. No work directory, no output capture, no heartbeats:
everything the batchpool agent does beyond this is overhead the benchmark puts a price on.
"""

import subprocess
import sys
import threading

_lock = threading.Lock()


def _run(ident: str, command: str) -> None:
    code = subprocess.call(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL)
    with _lock:
        sys.stdout.write(f"{ident}\t{code}\n")
        sys.stdout.flush()


for line in sys.stdin:
    ident, _, command = line.rstrip("\n").partition("\t")
    threading.Thread(target=_run, args=(ident, command)).start()
