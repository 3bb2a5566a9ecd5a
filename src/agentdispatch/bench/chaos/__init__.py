"""`agentdispatch bench chaos`: kill workers and job processes under load; account for every dispatch.

`run` drives one run and `model` holds its settings, tracked dispatches and kill log; `fleet` starts the
workers (`agents/chaos_agent.py`, run by path), `watch` finds and kills job processes, `record` is what
each job attempt writes, `analysis` and `result` judge.
"""
