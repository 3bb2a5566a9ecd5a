"""`agentdispatch bench worker`: job start latency and idle process memory, our worker vs livekit-agents.

`run` drives one run; `procs` starts the two workers, `memory` measures them, `result` judges and prints;
`agents/` holds the two agent scripts they run (by path) and `record` what those scripts write.
"""
