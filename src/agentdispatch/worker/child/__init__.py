"""The job-process side of the worker: what runs inside each job process.

- `main`: the process main (prewarm once, wait for one job, run it, report, exit)
- `context`: `JobProcess` and `JobContext`, what the entrypoint sees
- `room`: the room (presence) client a job connects with
- `forkserver_freeze`: imported last by the forkserver's preload

Nothing here imports the parent side (`worker.runtime`, `worker.jobs`, `worker.supervised`, ...); both sides
share only `worker.ipc` (the pipe messages), `worker.refs` and `worker.facts`. Kept empty so that importing
one child module loads nothing else.
"""
