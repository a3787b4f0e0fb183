"""A lab script: check a job, serve it to one DUT, fetch a file as that DUT, read the log.

Run it after `pip install ./citron-py`:

    python citron-py/examples/lab_script.py [JOB.yaml]

Without an argument it uses a small inline job. Everything stays on loopback: the default lab's
dut1 is 127.0.0.2, so requests sent from that address are dut1's.
"""

from __future__ import annotations

import http.client
import sys
from typing import List, Optional, Tuple

import citron

INLINE_JOB = """\
deployment:
  start:
    cmdline: [console=ttyS0, "citron.machine={{ machine_id }}"]
    storage:
      http:
        - path: /hello.txt
          data: "hello from {{ machine_id }}"
          lifetime: {access_count: 1}
"""


def load(argv: List[str]) -> citron.JobDescription:
    if len(argv) > 1:
        return citron.JobDescription.from_file(argv[1])
    return citron.JobDescription.from_yaml(INLINE_JOB, filename="inline.yaml")


def fetch(srv: citron.Server, path: str, source: str) -> Tuple[int, bytes]:
    addr: Optional[Tuple[str, int]] = srv.http_address
    if addr is None:
        raise RuntimeError("the HTTP server is off")
    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def main(argv: List[str]) -> int:
    try:
        job = load(argv)
        job.validate()
    except citron.JobError as e:
        for d in e.errors:
            print(f"{d.file}:{d.line}:{d.column}: {d.field}: {d.message}", file=sys.stderr)
        return 1

    lab = citron.Lab.default()
    rendered: citron.ResolvedJob = job.render(dut="dut1", lab=lab)
    for a in rendered.artifacts:
        size = "?" if a.size is None else str(a.size)
        print(f"{a.protocol:5} {a.path:30} {a.source:5} {size:>8} bytes  reads={a.access_count}")

    with citron.Server(lab=lab, http="127.0.0.1:0", tftp=None) as srv:
        srv.set_job("dut1", job)
        for attempt in range(2):
            status, body = fetch(srv, "/hello.txt", "127.0.0.2")
            print(f"read {attempt + 1}: {status} {body!r}")
        srv.event("dut1", "boot")
        print("after boot:", fetch(srv, "/hello.txt", "127.0.0.2")[0])
    # Stopped: every transfer has ended, so the log is complete (it outlives the servers).
    records: List[citron.AccessRecord] = srv.accesses("dut1")
    for r in records:
        print(f"  {r['protocol']} {r['path']} {r['outcome']} {r['reason'] or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
